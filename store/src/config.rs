//! Which store to open, written as one string so it fits a flag or an environment variable.
//!
//! - `sqlite:PATH` (also `sqlite://PATH`): the embedded backend on one file. [`open`] creates
//!   the file and its parent directory when they are missing.
//! - `etcd:URL[,URL...][?prefix=PREFIX]`: an etcd cluster. An endpoint written as a bare
//!   `host:port` gets `http://`. Every key lives under `PREFIX`, `/corral` unless given.
//!
//! `Display` writes the same syntax back, so a config survives a round trip through a string.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::etcd::EtcdStore;
use crate::sqlite::SqliteStore;
use crate::{DynStore, Result};

/// The key prefix etcd keys live under when the config names none.
pub const DEFAULT_ETCD_PREFIX: &str = "/corral";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    Sqlite {
        path: PathBuf,
    },
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("store config {0:?} must start with \"sqlite:\" or \"etcd:\"")]
    UnknownScheme(String),
    #[error("store config {0:?} names no SQLite path")]
    EmptyPath(String),
    #[error("store config {0:?} names no etcd endpoint")]
    NoEndpoints(String),
    #[error("etcd endpoint {0:?} is neither an http(s) URL nor host:port")]
    BadEndpoint(String),
    #[error("store config option {0:?} is unknown (the only option is prefix=...)")]
    UnknownOption(String),
}

impl FromStr for StoreConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(ConfigError::EmptyPath(text.to_owned()));
            }
            return Ok(StoreConfig::Sqlite {
                path: PathBuf::from(path),
            });
        }
        if let Some(rest) = text.strip_prefix("etcd:") {
            let (list, options) = match rest.split_once('?') {
                Some((list, options)) => (list, Some(options)),
                None => (rest, None),
            };
            let mut prefix = DEFAULT_ETCD_PREFIX.to_owned();
            for option in options.into_iter().flat_map(|o| o.split('&')) {
                match option.split_once('=') {
                    Some(("prefix", value)) => prefix = value.to_owned(),
                    _ => return Err(ConfigError::UnknownOption(option.to_owned())),
                }
            }
            let endpoints = list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(normalize_endpoint)
                .collect::<Result<Vec<_>, _>>()?;
            if endpoints.is_empty() {
                return Err(ConfigError::NoEndpoints(text.to_owned()));
            }
            return Ok(StoreConfig::Etcd { endpoints, prefix });
        }
        Err(ConfigError::UnknownScheme(text.to_owned()))
    }
}

fn normalize_endpoint(endpoint: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::BadEndpoint(endpoint.to_owned());
    let (scheme, authority) = match endpoint.split_once("://") {
        Some((scheme, authority)) => (scheme, authority),
        None => ("http", endpoint),
    };
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(bad());
    }
    Ok(format!("{scheme}://{authority}"))
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => write!(f, "sqlite:{}", path.display()),
            StoreConfig::Etcd { endpoints, prefix } => {
                write!(f, "etcd:{}", endpoints.join(","))?;
                if prefix != DEFAULT_ETCD_PREFIX {
                    write!(f, "?prefix={prefix}")?;
                }
                Ok(())
            }
        }
    }
}

/// Opens the store a config names: the SQLite file (created with its directory if missing) or a
/// connection to etcd (which must answer; an unreachable cluster is `Unavailable`).
pub async fn open(config: &StoreConfig) -> Result<DynStore> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreConfig::Etcd { endpoints, prefix } => {
            Ok(Arc::new(EtcdStore::connect(endpoints, prefix).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreConfig, ConfigError> {
        text.parse()
    }

    #[test]
    fn sqlite_paths_parse_in_both_spellings() {
        let expected = StoreConfig::Sqlite {
            path: PathBuf::from("/var/lib/corral/db.sqlite"),
        };
        assert_eq!(
            parse("sqlite:/var/lib/corral/db.sqlite"),
            Ok(expected.clone())
        );
        assert_eq!(parse("sqlite:///var/lib/corral/db.sqlite"), Ok(expected));
        assert_eq!(
            parse("sqlite:data/corral.db"),
            Ok(StoreConfig::Sqlite {
                path: PathBuf::from("data/corral.db")
            })
        );
        assert!(matches!(parse("sqlite:"), Err(ConfigError::EmptyPath(_))));
    }

    #[test]
    fn etcd_endpoints_get_a_scheme_and_the_default_prefix() {
        assert_eq!(
            parse("etcd:127.0.0.1:2379, https://10.0.0.2:2379/"),
            Ok(StoreConfig::Etcd {
                endpoints: vec![
                    "http://127.0.0.1:2379".to_owned(),
                    "https://10.0.0.2:2379".to_owned()
                ],
                prefix: "/corral".to_owned(),
            })
        );
        assert_eq!(
            parse("etcd:http://a:1?prefix=/other"),
            Ok(StoreConfig::Etcd {
                endpoints: vec!["http://a:1".to_owned()],
                prefix: "/other".to_owned()
            })
        );
    }

    #[test]
    fn malformed_configs_are_rejected() {
        assert!(matches!(
            parse("postgres:x"),
            Err(ConfigError::UnknownScheme(_))
        ));
        assert!(matches!(parse("etcd:"), Err(ConfigError::NoEndpoints(_))));
        assert!(matches!(
            parse("etcd:ftp://a:1"),
            Err(ConfigError::BadEndpoint(_))
        ));
        assert!(matches!(
            parse("etcd:a:1/path"),
            Err(ConfigError::BadEndpoint(_))
        ));
        assert!(matches!(
            parse("etcd:a:1?limit=3"),
            Err(ConfigError::UnknownOption(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "sqlite:/tmp/x.db",
            "etcd:http://a:1,http://b:2",
            "etcd:http://a:1?prefix=/p",
        ] {
            let config = parse(text).expect("parses");
            assert_eq!(config.to_string(), text);
            assert_eq!(parse(&config.to_string()), Ok(config));
        }
    }
}
