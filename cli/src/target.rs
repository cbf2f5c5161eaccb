//! Which objects a command's arguments name, in kubectl's two forms:
//! `KIND [NAME...]` (KIND may be a comma-separated list when no name follows) and
//! `KIND/NAME...`. The words are resolved to resource types later, against the server's
//! [`crate::discovery::Catalog`].

/// The objects named on a command line, before their kinds are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// `KIND[,KIND...]` with no names: every object of each kind (narrowed by selectors).
    Kinds(Vec<String>),
    /// `KIND NAME...` or `KIND/NAME...`: these objects, in order.
    Named(Vec<(String, String)>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("you must specify the type of resource (for example `instances`)")]
    Missing,
    #[error(
        "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'corralctl get instance/web-1' instead of 'corralctl get instance instance/web-1')"
    )]
    Mixed,
    #[error("{0:?} is not KIND/NAME")]
    Malformed(String),
    #[error("names may not follow a comma-separated list of kinds ({0:?})")]
    NamesAfterKindList(String),
}

impl Targets {
    /// Parses command-line arguments.
    pub fn parse(args: &[String]) -> Result<Targets, TargetError> {
        let Some(first) = args.first() else {
            return Err(TargetError::Missing);
        };
        if first.contains('/') {
            let mut named = Vec::new();
            for arg in args {
                match arg.split_once('/') {
                    Some((kind, name))
                        if !kind.is_empty() && !name.is_empty() && !name.contains('/') =>
                    {
                        named.push((kind.to_string(), name.to_string()))
                    }
                    Some(_) => return Err(TargetError::Malformed(arg.clone())),
                    None => return Err(TargetError::Mixed),
                }
            }
            return Ok(Targets::Named(named));
        }
        let names = &args[1..];
        if names.iter().any(|n| n.contains('/')) {
            return Err(TargetError::Mixed);
        }
        let kinds: Vec<String> = first
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        if kinds.is_empty() {
            return Err(TargetError::Missing);
        }
        if names.is_empty() {
            return Ok(Targets::Kinds(kinds));
        }
        if kinds.len() > 1 {
            return Err(TargetError::NamesAfterKindList(first.clone()));
        }
        Ok(Targets::Named(
            names
                .iter()
                .map(|n| (kinds[0].clone(), n.clone()))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn both_kubectl_forms_parse() {
        let named = |pairs: &[(&str, &str)]| {
            Targets::Named(
                pairs
                    .iter()
                    .map(|(k, n)| (k.to_string(), n.to_string()))
                    .collect(),
            )
        };
        let cases: Vec<(&[&str], Result<Targets, TargetError>)> = vec![
            (&["instances"], Ok(Targets::Kinds(args(&["instances"])))),
            (
                &["instances,sleds"],
                Ok(Targets::Kinds(args(&["instances", "sleds"]))),
            ),
            (
                &["inst", "a", "b"],
                Ok(named(&[("inst", "a"), ("inst", "b")])),
            ),
            (
                &["inst/a", "sled/s1"],
                Ok(named(&[("inst", "a"), ("sled", "s1")])),
            ),
            (&[], Err(TargetError::Missing)),
            (&["inst", "inst/a"], Err(TargetError::Mixed)),
            (&["inst/a", "b"], Err(TargetError::Mixed)),
            (&["inst/"], Err(TargetError::Malformed("inst/".into()))),
            (&["/a"], Err(TargetError::Malformed("/a".into()))),
            (&["a/b/c"], Err(TargetError::Malformed("a/b/c".into()))),
            (
                &["inst,sled", "a"],
                Err(TargetError::NamesAfterKindList("inst,sled".into())),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(Targets::parse(&args(input)), expected, "{input:?}");
        }
    }
}
