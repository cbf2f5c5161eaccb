//! A static token file in kube-apiserver's format (`--token-auth-file`): one credential per
//! line, `token,user,uid[,"group1,group2"]`; blank lines and lines starting with `#` are
//! skipped.
//!
//! # Invariants
//!
//! - A file with a malformed line, an empty token or user, or a token given twice is refused
//!   whole (the server does not start), naming the line.
//! - Tokens are compared in constant time with respect to their content.

use std::collections::BTreeMap;

use super::User;

#[derive(Debug, Default)]
pub struct TokenFile {
    users: BTreeMap<String, User>,
}

#[derive(Debug, thiserror::Error)]
#[error("token file line {line}: {message}")]
pub struct TokenFileError {
    pub line: usize,
    pub message: String,
}

impl TokenFile {
    pub fn parse(text: &str) -> Result<TokenFile, TokenFileError> {
        let mut users = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: &str| TokenFileError {
                line: index + 1,
                message: message.to_string(),
            };
            let fields = split_csv(line).map_err(&error)?;
            if fields.len() < 3 || fields.len() > 4 {
                return Err(error("expected token,user,uid[,\"groups\"]"));
            }
            let (token, name, uid) = (&fields[0], &fields[1], &fields[2]);
            if token.is_empty() || name.is_empty() {
                return Err(error("the token and the user must not be empty"));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let user = User {
                name: name.clone(),
                uid: uid.clone(),
                groups,
                extra: BTreeMap::new(),
            };
            if users.insert(token.clone(), user).is_some() {
                return Err(error("this token is already given on an earlier line"));
            }
        }
        Ok(TokenFile { users })
    }

    /// The user `token` names.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        let mut found = None;
        for (known, user) in &self.users {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(user.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits one CSV line: fields separated by commas, a field in double quotes may hold commas
/// and `""` for a quote.
fn split_csv(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_users_with_quoted_groups() {
        let file =
            TokenFile::parse("# comment\n\nt1,alice,u1,\"corral:tenants,team-a\"\nt2,bob,u2\n")
                .unwrap();
        let alice = file.authenticate("t1").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, "u1");
        assert_eq!(alice.groups, vec!["corral:tenants", "team-a"]);
        assert_eq!(
            file.authenticate("t2").unwrap().groups,
            Vec::<String>::new()
        );
        assert!(file.authenticate("t3").is_none());
        assert!(file.authenticate("t").is_none());
    }

    #[test]
    fn malformed_files_are_refused_naming_the_line() {
        for (text, line) in [
            ("t1,alice\n", 1),
            ("t1,alice,u1\nt1,bob,u2\n", 2),
            ("\n,alice,u1\n", 2),
            ("t1,alice,u1,\"open\n", 1),
            ("t1,alice,u1,g,extra\n", 1),
        ] {
            let error = TokenFile::parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
        }
    }
}
