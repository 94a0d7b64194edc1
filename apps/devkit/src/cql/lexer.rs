//! The CQL lexer: statement text into tokens (identifiers, quoted names, strings,
//! numbers, UUIDs, blobs, symbols).

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Quoted(String),
    Str(String),
    Number(String),
    Uuid([u8; 16]),
    Blob(Vec<u8>),
    Sym(&'static str),
}

pub(super) fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = text[i..].chars().next().ok_or("bad utf-8")?;
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push(Tok::Str(s));
        } else if c == '"' {
            let end = text[i + 1..].find('"').ok_or("unterminated quoted identifier")?;
            out.push(Tok::Quoted(text[i + 1..i + 1 + end].to_owned()));
            i += end + 2;
        } else if c.is_ascii_alphanumeric()
            || c == '_'
            || (c == '-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'_'
                    || b[i] == b'.' && start_is_number(&text[start..i])
                    || b[i] == b'-' && looks_like_uuid_so_far(&text[start..i]))
            {
                i += 1;
            }
            // Exponents: 1e-5
            if i < b.len()
                && (b[i] == b'-' || b[i] == b'+')
                && text[start..i].ends_with(['e', 'E'])
                && start_is_number(&text[start..i - 1])
            {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let word = &text[start..i];
            if let Some(u) = parse_uuid(word) {
                out.push(Tok::Uuid(u));
            } else if let Some(hex) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
                out.push(Tok::Blob(parse_hex(hex)?));
            } else if start_is_number(word) {
                out.push(Tok::Number(word.to_owned()));
            } else {
                out.push(Tok::Ident(word.to_ascii_lowercase()));
            }
        } else {
            let two = text.get(i..i + 2).unwrap_or("");
            let sym: &'static str = match two {
                "<=" => "<=",
                ">=" => ">=",
                "!=" => "!=",
                _ => match c {
                    '(' => "(",
                    ')' => ")",
                    ',' => ",",
                    ';' => ";",
                    '.' => ".",
                    '=' => "=",
                    '<' => "<",
                    '>' => ">",
                    '{' => "{",
                    '}' => "}",
                    '[' => "[",
                    ']' => "]",
                    ':' => ":",
                    '?' => "?",
                    '*' => "*",
                    _ => return Err(format!("unexpected character {c:?}")),
                },
            };
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    Ok(out)
}

fn start_is_number(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_digit() || ".eE+-".contains(c))
}

fn looks_like_uuid_so_far(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') && s.len() <= 36 && !s.is_empty()
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let parts: Vec<&str> = s.split('-').collect();
    if s.len() != 36 || parts.iter().map(|p| p.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = parts.concat();
    let bytes = parse_hex(&hex).ok()?;
    bytes.try_into().ok()
}

fn parse_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex {hex}")))
        .collect()
}
