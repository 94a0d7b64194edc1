//! A small CQL parser for the statements a writer, a driver and a test use: CREATE
//! KEYSPACE/TABLE, USE, INSERT (with TTL), SELECT (by partition key, clustering range, IN,
//! full scans, LIMIT), TRUNCATE, DROP.

use super::lexer::{Tok, lex};
use super::types::Literal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub keyspace: Option<String>,
    pub name: String,
}

/// A value position: a literal or the n-th bind marker.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Literal(Literal),
    Bind(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    One(Term),
    /// `IN (a, b, c)`; `IN ?` is `One(Bind)`.
    List(Vec<Term>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    pub value: Operand,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    All,
    Count,
    Columns(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Select {
        table: TableRef,
        selection: Selection,
        conditions: Vec<Condition>,
        limit: Option<Term>,
    },
    Insert {
        table: TableRef,
        columns: Vec<String>,
        values: Vec<Term>,
        ttl: Option<Term>,
        /// `USING TIMESTAMP`: the write's time in microseconds; the newest write wins.
        timestamp: Option<Term>,
    },
    CreateKeyspace {
        name: String,
        if_not_exists: bool,
        replication: Vec<(String, String)>,
    },
    CreateTable {
        table: TableRef,
        if_not_exists: bool,
        columns: Vec<(String, String)>,
        partition_key: Vec<String>,
        clustering: Vec<String>,
        /// Clustering columns declared `WITH CLUSTERING ORDER BY (c DESC)`.
        descending: Vec<String>,
    },
    Use(String),
    Truncate(TableRef),
    DropTable {
        table: TableRef,
        if_exists: bool,
    },
    DropKeyspace {
        name: String,
        if_exists: bool,
    },
}

/// Parses one statement; returns it with the number of bind markers.
pub fn parse(text: &str) -> Result<(Statement, usize), String> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        binds: 0,
    };
    let stmt = p.statement()?;
    p.eat_sym(";");
    if p.pos != p.toks.len() {
        return Err(format!("unexpected {:?} after the statement", p.toks[p.pos]));
    }
    Ok((stmt, p.binds))
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    binds: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Result<Tok, String> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of statement")?;
        self.pos += 1;
        Ok(t)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn kw(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(format!("expected {} near {:?}", kw.to_uppercase(), self.peek()))
        }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sym(&mut self, s: &str) -> Result<(), String> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(format!("expected '{s}' near {:?}", self.peek()))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Ident(w) => Ok(w),
            Tok::Quoted(w) => Ok(w),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn table_ref(&mut self) -> Result<TableRef, String> {
        let first = self.ident()?;
        if self.eat_sym(".") {
            Ok(TableRef {
                keyspace: Some(first),
                name: self.ident()?,
            })
        } else {
            Ok(TableRef {
                keyspace: None,
                name: first,
            })
        }
    }

    fn if_not_exists(&mut self) -> Result<bool, String> {
        if self.eat_kw("if") {
            self.kw("not")?;
            self.kw("exists")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn statement(&mut self) -> Result<Statement, String> {
        if self.eat_kw("select") {
            return self.select();
        }
        if self.eat_kw("insert") {
            return self.insert();
        }
        if self.eat_kw("use") {
            return Ok(Statement::Use(self.ident()?));
        }
        if self.eat_kw("truncate") {
            self.eat_kw("table");
            return Ok(Statement::Truncate(self.table_ref()?));
        }
        if self.eat_kw("create") {
            if self.eat_kw("keyspace") {
                return self.create_keyspace();
            }
            if self.eat_kw("table") || self.eat_kw("columnfamily") {
                return self.create_table();
            }
            return Err("only CREATE KEYSPACE and CREATE TABLE are supported".into());
        }
        if self.eat_kw("drop") {
            let keyspace = if self.eat_kw("keyspace") {
                true
            } else if self.eat_kw("table") {
                false
            } else {
                return Err("only DROP KEYSPACE and DROP TABLE are supported".into());
            };
            let if_exists = if self.eat_kw("if") {
                self.kw("exists")?;
                true
            } else {
                false
            };
            return Ok(if keyspace {
                Statement::DropKeyspace {
                    name: self.ident()?,
                    if_exists,
                }
            } else {
                Statement::DropTable {
                    table: self.table_ref()?,
                    if_exists,
                }
            });
        }
        Err(format!("unsupported statement starting with {:?}", self.peek()))
    }

    fn select(&mut self) -> Result<Statement, String> {
        let selection = if self.eat_sym("*") {
            Selection::All
        } else if self.is_kw("count") && matches!(self.toks.get(self.pos + 1), Some(Tok::Sym("("))) {
            self.pos += 2;
            if !self.eat_sym("*") {
                self.ident()?;
            }
            self.sym(")")?;
            Selection::Count
        } else {
            let mut cols = vec![self.ident()?];
            while self.eat_sym(",") {
                cols.push(self.ident()?);
            }
            Selection::Columns(cols)
        };
        self.kw("from")?;
        let table = self.table_ref()?;
        let mut conditions = Vec::new();
        if self.eat_kw("where") {
            loop {
                conditions.push(self.condition()?);
                if !self.eat_kw("and") {
                    break;
                }
            }
        }
        let mut limit = None;
        loop {
            if self.eat_kw("limit") {
                limit = Some(self.term()?);
            } else if self.eat_kw("allow") {
                self.kw("filtering")?;
            } else if self.eat_kw("bypass") {
                self.kw("cache")?;
            } else {
                break;
            }
        }
        Ok(Statement::Select {
            table,
            selection,
            conditions,
            limit,
        })
    }

    fn condition(&mut self) -> Result<Condition, String> {
        let column = self.ident()?;
        let op = match self.next()? {
            Tok::Sym("=") => Op::Eq,
            Tok::Sym("<") => Op::Lt,
            Tok::Sym("<=") => Op::Le,
            Tok::Sym(">") => Op::Gt,
            Tok::Sym(">=") => Op::Ge,
            Tok::Ident(w) if w == "in" => Op::In,
            other => return Err(format!("unsupported operator {other:?}")),
        };
        let value = if op == Op::In && self.eat_sym("(") {
            let mut items = Vec::new();
            if !self.eat_sym(")") {
                loop {
                    items.push(self.term()?);
                    if self.eat_sym(")") {
                        break;
                    }
                    self.sym(",")?;
                }
            }
            Operand::List(items)
        } else {
            Operand::One(self.term()?)
        };
        Ok(Condition { column, op, value })
    }

    fn term(&mut self) -> Result<Term, String> {
        if self.eat_sym("?") {
            self.binds += 1;
            return Ok(Term::Bind(self.binds - 1));
        }
        Ok(Term::Literal(self.literal()?))
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next()? {
            Tok::Str(s) => Ok(Literal::Str(s)),
            Tok::Number(n) => Ok(Literal::Number(n)),
            Tok::Uuid(u) => Ok(Literal::Uuid(u)),
            Tok::Blob(b) => Ok(Literal::Blob(b)),
            Tok::Ident(w) if w == "true" => Ok(Literal::Bool(true)),
            Tok::Ident(w) if w == "false" => Ok(Literal::Bool(false)),
            Tok::Ident(w) if w == "null" => Ok(Literal::Null),
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if !self.eat_sym("]") {
                    loop {
                        items.push(self.literal()?);
                        if self.eat_sym("]") {
                            break;
                        }
                        self.sym(",")?;
                    }
                }
                Ok(Literal::List(items))
            }
            Tok::Sym("{") => {
                if self.eat_sym("}") {
                    return Ok(Literal::Map(Vec::new()));
                }
                let first = self.literal()?;
                if self.eat_sym(":") {
                    let mut entries = vec![(first, self.literal()?)];
                    while self.eat_sym(",") {
                        let k = self.literal()?;
                        self.sym(":")?;
                        entries.push((k, self.literal()?));
                    }
                    self.sym("}")?;
                    Ok(Literal::Map(entries))
                } else {
                    let mut items = vec![first];
                    while self.eat_sym(",") {
                        items.push(self.literal()?);
                    }
                    self.sym("}")?;
                    Ok(Literal::Set(items))
                }
            }
            other => Err(format!("expected a value, found {other:?}")),
        }
    }

    fn insert(&mut self) -> Result<Statement, String> {
        self.kw("into")?;
        let table = self.table_ref()?;
        self.sym("(")?;
        let mut columns = vec![self.ident()?];
        while self.eat_sym(",") {
            columns.push(self.ident()?);
        }
        self.sym(")")?;
        self.kw("values")?;
        self.sym("(")?;
        let mut values = vec![self.term()?];
        while self.eat_sym(",") {
            values.push(self.term()?);
        }
        self.sym(")")?;
        if columns.len() != values.len() {
            return Err(format!("{} columns but {} values", columns.len(), values.len()));
        }
        self.if_not_exists()?;
        let mut ttl = None;
        let mut timestamp = None;
        if self.eat_kw("using") {
            loop {
                if self.eat_kw("ttl") {
                    ttl = Some(self.term()?);
                } else if self.eat_kw("timestamp") {
                    timestamp = Some(self.term()?);
                } else {
                    return Err("expected TTL or TIMESTAMP after USING".into());
                }
                if !self.eat_kw("and") {
                    break;
                }
            }
        }
        Ok(Statement::Insert {
            table,
            columns,
            values,
            ttl,
            timestamp,
        })
    }

    fn create_keyspace(&mut self) -> Result<Statement, String> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident()?;
        self.kw("with")?;
        let mut replication = Vec::new();
        loop {
            let option = self.ident()?;
            self.sym("=")?;
            let value = self.literal()?;
            if option == "replication" {
                let Literal::Map(entries) = value else {
                    return Err("replication must be a map".into());
                };
                for (k, v) in entries {
                    let key = match k {
                        Literal::Str(s) => s,
                        other => return Err(format!("bad replication key {other:?}")),
                    };
                    let val = match v {
                        Literal::Str(s) | Literal::Number(s) => s,
                        other => return Err(format!("bad replication value {other:?}")),
                    };
                    replication.push((key, val));
                }
            }
            if !self.eat_kw("and") {
                break;
            }
        }
        Ok(Statement::CreateKeyspace {
            name,
            if_not_exists,
            replication,
        })
    }

    fn create_table(&mut self) -> Result<Statement, String> {
        let if_not_exists = self.if_not_exists()?;
        let table = self.table_ref()?;
        self.sym("(")?;
        let mut columns = Vec::new();
        let mut partition_key = Vec::new();
        let mut clustering = Vec::new();
        loop {
            if self.eat_kw("primary") {
                self.kw("key")?;
                self.sym("(")?;
                if self.eat_sym("(") {
                    partition_key.push(self.ident()?);
                    while self.eat_sym(",") {
                        partition_key.push(self.ident()?);
                    }
                    self.sym(")")?;
                } else {
                    partition_key.push(self.ident()?);
                }
                while self.eat_sym(",") {
                    clustering.push(self.ident()?);
                }
                self.sym(")")?;
            } else {
                let name = self.ident()?;
                let ty = self.type_text()?;
                if self.eat_kw("primary") {
                    self.kw("key")?;
                    partition_key.push(name.clone());
                }
                columns.push((name, ty));
            }
            if self.eat_sym(")") {
                break;
            }
            self.sym(",")?;
        }
        // Of the table options only the clustering order changes the emulator's behaviour.
        let mut descending = Vec::new();
        if self.eat_kw("with") && self.eat_kw("clustering") {
            self.kw("order")?;
            self.kw("by")?;
            self.sym("(")?;
            loop {
                let name = self.ident()?;
                if self.eat_kw("desc") {
                    descending.push(name);
                } else {
                    self.eat_kw("asc");
                }
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.sym(")")?;
        }
        self.pos = self.toks.len() - usize::from(matches!(self.toks.last(), Some(Tok::Sym(";"))));
        if partition_key.is_empty() {
            return Err("a table needs a PRIMARY KEY".into());
        }
        Ok(Statement::CreateTable {
            table,
            if_not_exists,
            columns,
            partition_key,
            clustering,
            descending,
        })
    }

    /// A type, possibly generic: reassembled as text for `CqlType::parse`.
    fn type_text(&mut self) -> Result<String, String> {
        let mut out = self.ident()?;
        if self.eat_sym("<") {
            out.push('<');
            out.push_str(&self.type_text()?);
            while self.eat_sym(",") {
                out.push_str(", ");
                out.push_str(&self.type_text()?);
            }
            self.sym(">")?;
            out.push('>');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
