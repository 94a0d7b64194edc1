//! CQL types: parsing type names, encoding type options, literals to bytes, and typed
//! comparison of serialised values.

use std::cmp::Ordering;

use super::frame::Writer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlType {
    Ascii,
    Text,
    Int,
    BigInt,
    Double,
    Float,
    Timestamp,
    Boolean,
    Blob,
    Uuid,
    TimeUuid,
    Inet,
    List(Box<CqlType>),
    Set(Box<CqlType>),
    Map(Box<CqlType>, Box<CqlType>),
}

impl CqlType {
    /// Parses a CQL type name such as `text`, `map<text, int>` or `frozen<set<text>>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        if let Some(inner) = strip_generic(&lower, "frozen") {
            return CqlType::parse(inner);
        }
        if let Some(inner) = strip_generic(&lower, "list") {
            return Ok(CqlType::List(Box::new(CqlType::parse(inner)?)));
        }
        if let Some(inner) = strip_generic(&lower, "set") {
            return Ok(CqlType::Set(Box::new(CqlType::parse(inner)?)));
        }
        if let Some(inner) = strip_generic(&lower, "map") {
            let (k, v) = split_top_comma(inner).ok_or_else(|| format!("bad map type {t}"))?;
            return Ok(CqlType::Map(
                Box::new(CqlType::parse(k)?),
                Box::new(CqlType::parse(v)?),
            ));
        }
        Ok(match lower.as_str() {
            "ascii" => CqlType::Ascii,
            "text" | "varchar" => CqlType::Text,
            "int" => CqlType::Int,
            "bigint" | "counter" => CqlType::BigInt,
            "double" => CqlType::Double,
            "float" => CqlType::Float,
            "timestamp" => CqlType::Timestamp,
            "boolean" => CqlType::Boolean,
            "blob" => CqlType::Blob,
            "uuid" => CqlType::Uuid,
            "timeuuid" => CqlType::TimeUuid,
            "inet" => CqlType::Inet,
            other => return Err(format!("unsupported type {other}")),
        })
    }

    /// The type as `system_schema.columns.type` shows it.
    pub fn cql_name(&self) -> String {
        match self {
            CqlType::Ascii => "ascii".into(),
            CqlType::Text => "text".into(),
            CqlType::Int => "int".into(),
            CqlType::BigInt => "bigint".into(),
            CqlType::Double => "double".into(),
            CqlType::Float => "float".into(),
            CqlType::Timestamp => "timestamp".into(),
            CqlType::Boolean => "boolean".into(),
            CqlType::Blob => "blob".into(),
            CqlType::Uuid => "uuid".into(),
            CqlType::TimeUuid => "timeuuid".into(),
            CqlType::Inet => "inet".into(),
            CqlType::List(t) => format!("list<{}>", t.cql_name()),
            CqlType::Set(t) => format!("set<{}>", t.cql_name()),
            CqlType::Map(k, v) => format!("map<{}, {}>", k.cql_name(), v.cql_name()),
        }
    }

    /// Writes the `[option]` describing this type in result metadata.
    pub fn write_option(&self, w: &mut Writer) {
        let id = match self {
            CqlType::Ascii => 0x0001,
            CqlType::BigInt => 0x0002,
            CqlType::Blob => 0x0003,
            CqlType::Boolean => 0x0004,
            CqlType::Double => 0x0007,
            CqlType::Float => 0x0008,
            CqlType::Int => 0x0009,
            CqlType::Timestamp => 0x000B,
            CqlType::Uuid => 0x000C,
            CqlType::Text => 0x000D,
            CqlType::TimeUuid => 0x000F,
            CqlType::Inet => 0x0010,
            CqlType::List(_) => 0x0020,
            CqlType::Map(_, _) => 0x0021,
            CqlType::Set(_) => 0x0022,
        };
        w.short(id);
        match self {
            CqlType::List(t) | CqlType::Set(t) => t.write_option(w),
            CqlType::Map(k, v) => {
                k.write_option(w);
                v.write_option(w);
            }
            _ => {}
        }
    }

    /// Checks that `bytes` is a valid serialisation of this type.
    pub fn validate(&self, bytes: &[u8]) -> Result<(), String> {
        let fixed = |n: usize| {
            if bytes.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{} needs {n} bytes, got {}",
                    self.cql_name(),
                    bytes.len()
                ))
            }
        };
        match self {
            CqlType::Int | CqlType::Float => fixed(4),
            CqlType::BigInt | CqlType::Double | CqlType::Timestamp => fixed(8),
            CqlType::Boolean => fixed(1),
            CqlType::Uuid | CqlType::TimeUuid => fixed(16),
            CqlType::Inet => {
                if bytes.len() == 4 || bytes.len() == 16 {
                    Ok(())
                } else {
                    Err("inet needs 4 or 16 bytes".into())
                }
            }
            CqlType::Text | CqlType::Ascii => std::str::from_utf8(bytes)
                .map(|_| ())
                .map_err(|_| "text is not UTF-8".into()),
            CqlType::Blob => Ok(()),
            CqlType::List(t) | CqlType::Set(t) => {
                for e in collection_elements(bytes, 1)? {
                    t.validate(e)?;
                }
                Ok(())
            }
            CqlType::Map(k, v) => {
                for (i, e) in collection_elements(bytes, 2)?.into_iter().enumerate() {
                    if i % 2 == 0 {
                        k.validate(e)?
                    } else {
                        v.validate(e)?
                    }
                }
                Ok(())
            }
        }
    }

    /// Orders two serialised values of this type the way Cassandra sorts clustering keys.
    pub fn compare(&self, a: &[u8], b: &[u8]) -> Ordering {
        fn int_of(b: &[u8]) -> i64 {
            match b.len() {
                4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
                8 => i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                _ => 0,
            }
        }
        fn float_of(b: &[u8]) -> f64 {
            match b.len() {
                4 => f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64,
                8 => f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                _ => 0.0,
            }
        }
        match self {
            CqlType::Int | CqlType::BigInt | CqlType::Timestamp => int_of(a).cmp(&int_of(b)),
            CqlType::Double | CqlType::Float => float_of(a).total_cmp(&float_of(b)),
            _ => a.cmp(b),
        }
    }
}

fn strip_generic<'a>(t: &'a str, name: &str) -> Option<&'a str> {
    let rest = t.strip_prefix(name)?.trim_start();
    rest.strip_prefix('<')?.strip_suffix('>').map(str::trim)
}

fn split_top_comma(t: &str) -> Option<(&str, &str)> {
    let mut depth = 0;
    for (i, c) in t.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return Some((&t[..i], &t[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Splits a serialised collection into its elements (`per_entry` = 2 for maps).
pub fn collection_elements(bytes: &[u8], per_entry: usize) -> Result<Vec<&[u8]>, String> {
    let bad = || "malformed collection".to_owned();
    if bytes.len() < 4 {
        return Err(bad());
    }
    let n = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if n < 0 {
        return Err(bad());
    }
    let mut pos = 4;
    let mut out = Vec::new();
    for _ in 0..(n as usize * per_entry) {
        let len_bytes = bytes.get(pos..pos + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        pos += 4;
        if len < 0 {
            return Err(bad());
        }
        out.push(bytes.get(pos..pos + len as usize).ok_or_else(bad)?);
        pos += len as usize;
    }
    if pos != bytes.len() {
        return Err(bad());
    }
    Ok(out)
}

/// Serialises a collection from already-serialised elements.
pub fn collection(elements: &[Vec<u8>], entries: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries as i32).to_be_bytes());
    for e in elements {
        out.extend_from_slice(&(e.len() as i32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// A literal in CQL text.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Number(String),
    Bool(bool),
    Uuid([u8; 16]),
    Blob(Vec<u8>),
    List(Vec<Literal>),
    Set(Vec<Literal>),
    Map(Vec<(Literal, Literal)>),
    Null,
}

impl Literal {
    /// Serialises the literal as a value of type `t`.
    pub fn to_bytes(&self, t: &CqlType) -> Result<Option<Vec<u8>>, String> {
        let mismatch = || format!("literal {self:?} is not a valid {}", t.cql_name());
        Ok(Some(match (self, t) {
            (Literal::Null, _) => return Ok(None),
            (Literal::Str(s), CqlType::Text | CqlType::Ascii) => s.as_bytes().to_vec(),
            (Literal::Str(s), CqlType::Timestamp) => {
                s.parse::<i64>().map_err(|_| mismatch())?.to_be_bytes().to_vec()
            }
            (Literal::Str(s), CqlType::Inet) => {
                let ip: std::net::IpAddr = s.parse().map_err(|_| mismatch())?;
                match ip {
                    std::net::IpAddr::V4(v) => v.octets().to_vec(),
                    std::net::IpAddr::V6(v) => v.octets().to_vec(),
                }
            }
            (Literal::Number(n), CqlType::Int) => {
                n.parse::<i32>().map_err(|_| mismatch())?.to_be_bytes().to_vec()
            }
            (Literal::Number(n), CqlType::BigInt | CqlType::Timestamp) => {
                n.parse::<i64>().map_err(|_| mismatch())?.to_be_bytes().to_vec()
            }
            (Literal::Number(n), CqlType::Double) => {
                n.parse::<f64>().map_err(|_| mismatch())?.to_be_bytes().to_vec()
            }
            (Literal::Number(n), CqlType::Float) => {
                n.parse::<f32>().map_err(|_| mismatch())?.to_be_bytes().to_vec()
            }
            (Literal::Bool(b), CqlType::Boolean) => vec![*b as u8],
            (Literal::Uuid(u), CqlType::Uuid | CqlType::TimeUuid) => u.to_vec(),
            (Literal::Blob(b), CqlType::Blob) => b.clone(),
            (Literal::List(items) | Literal::Set(items), CqlType::List(e) | CqlType::Set(e)) => {
                let elems = items
                    .iter()
                    .map(|i| {
                        i.to_bytes(e)
                            .and_then(|b| b.ok_or_else(|| "null in collection".to_owned()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                collection(&elems, elems.len())
            }
            (Literal::Map(entries), CqlType::Map(k, v)) => {
                let mut elems = Vec::new();
                for (a, b) in entries {
                    elems.push(a.to_bytes(k)?.ok_or_else(|| "null map key".to_owned())?);
                    elems.push(b.to_bytes(v)?.ok_or_else(|| "null map value".to_owned())?);
                }
                collection(&elems, entries.len())
            }
            // `{}` parses as an empty map; it is also an empty set.
            (Literal::Map(entries), CqlType::Set(_)) if entries.is_empty() => collection(&[], 0),
            _ => return Err(mismatch()),
        }))
    }
}

pub fn text(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

pub fn text_set(items: &[String]) -> Option<Vec<u8>> {
    let elems: Vec<Vec<u8>> = items.iter().map(|s| s.as_bytes().to_vec()).collect();
    Some(collection(&elems, elems.len()))
}

pub fn text_map(items: &[(String, String)]) -> Option<Vec<u8>> {
    let mut elems = Vec::new();
    for (k, v) in items {
        elems.push(k.as_bytes().to_vec());
        elems.push(v.as_bytes().to_vec());
    }
    Some(collection(&elems, items.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_types() {
        assert_eq!(
            CqlType::parse("frozen<map<text, list<int>>>"),
            Ok(CqlType::Map(
                Box::new(CqlType::Text),
                Box::new(CqlType::List(Box::new(CqlType::Int)))
            ))
        );
        assert!(CqlType::parse("decimal").is_err());
    }

    #[test]
    fn literals_serialise_and_validate() {
        let t = CqlType::parse("map<text, bigint>").expect("type");
        let lit = Literal::Map(vec![(Literal::Str("a".into()), Literal::Number("7".into()))]);
        let bytes = lit.to_bytes(&t).expect("ok").expect("not null");
        t.validate(&bytes).expect("valid");
        assert!(CqlType::Int.validate(&[0, 0, 1]).is_err());
        assert_eq!(
            CqlType::BigInt.compare(&(-5i64).to_be_bytes(), &3i64.to_be_bytes()),
            Ordering::Less
        );
    }
}
