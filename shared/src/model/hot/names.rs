//! SQL names: the one quoting function ([`quote_ident`]) every name from the configuration or
//! the catalog goes through before it reaches SQL, and the checks on names from the
//! configuration.

/// Postgres truncates identifiers longer than this; refusing them avoids silent aliasing.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The one way a name becomes SQL: double-quoted, every embedded `"` doubled. Correct for any
/// name Postgres can hold (quotes, dots, spaces, case, unicode); case is kept as written.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A name from the configuration: anything Postgres can store as an identifier (non-empty, no
/// NUL, at most 63 bytes, which Postgres would otherwise truncate silently).
pub fn validate_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL character"));
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "{name:?} is longer than {MAX_IDENTIFIER_BYTES} bytes, which Postgres would truncate"
        ));
    }
    Ok(())
}

/// `table` or `schema.table`; a part in double quotes may hold dots and quotes (`""`), e.g.
/// `"my.schema"."Odd""Name"`. Unquoted parts are taken as written (case is kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub table: String,
}

impl QualifiedName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut chars = raw.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(format!("{raw:?} has an unterminated \"quoted\" name")),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' {
                        return Err(format!(
                            "{raw:?}: a name holding '\"' must be quoted, with the quote doubled"
                        ));
                    }
                    part.push(c);
                    chars.next();
                }
            }
            validate_identifier(&part).map_err(|m| format!("{raw:?}: a name {m}"))?;
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => {
                    return Err(format!(
                        "{raw:?}: unexpected {c:?} after a quoted name (write \"schema\".\"table\")"
                    ))
                }
            }
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(table), None, None) => Ok(Self {
                schema: None,
                table,
            }),
            (Some(schema), Some(table), None) => Ok(Self {
                schema: Some(schema),
                table,
            }),
            _ => Err(format!(
                "{raw:?} must be \"table\" or \"schema.table\" (quote a name that holds a dot)"
            )),
        }
    }

    /// The name as SQL: `"schema"."table"` or `"table"`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.table)),
            None => quote_ident(&self.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_name_is_quoted_into_one_identifier() {
        assert_eq!(quote_ident("blocks"), "\"blocks\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(
            quote_ident("x\"||(select 1)||\"x"),
            "\"x\"\"||(select 1)||\"\"x\""
        );
        assert_eq!(quote_ident("a.b"), "\"a.b\"");
        assert_eq!(quote_ident("Émile"), "\"Émile\"");
        for ok in ["blocks", "_x", "Block Number", "a$1", "é", "we\"ird", "a.b"] {
            validate_identifier(ok).unwrap();
        }
        for bad in ["", "a\0b", &"x".repeat(64)] {
            assert!(validate_identifier(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn qualified_names_parse_quoted_parts() {
        let q = |raw: &str| QualifiedName::parse(raw).map(|n| n.sql());
        assert_eq!(q("public.blocks").unwrap(), "\"public\".\"blocks\"");
        assert_eq!(q("blocks").unwrap(), "\"blocks\"");
        assert_eq!(q("Mixed.Case").unwrap(), "\"Mixed\".\"Case\"");
        assert_eq!(
            q("\"my.schema\".\"Odd\"\"Name\"").unwrap(),
            "\"my.schema\".\"Odd\"\"Name\""
        );
        let parsed = QualifiedName::parse("\"a.b\"").unwrap();
        assert_eq!((parsed.schema, parsed.table.as_str()), (None, "a.b"));
        for bad in ["a.b.c", "a.", ".b", "\"open", "a\"b", "\"x\"y", ""] {
            assert!(QualifiedName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
