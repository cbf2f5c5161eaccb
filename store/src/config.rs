//! Which store to open, written as one string so it fits a flag or an environment variable.
//!
//! - `sqlite:PATH` (also `sqlite://PATH`): the embedded backend on one file. [`open`] creates
//!   the file and its parent directory when they are missing.
//! - `etcd:URL[,URL...][?prefix=PREFIX][&cacert=PATH][&cert=PATH&key=PATH]`: an etcd cluster.
//!   Every key lives under `PREFIX`, `/corral` unless given. With `cacert` the connection is
//!   TLS and etcd's certificate must be signed by that CA (PEM); `cert` and `key` (PEM, given
//!   together) are the client certificate etcd's `--client-cert-auth` asks for — etcdctl's
//!   flag names. An endpoint written as a bare `host:port` gets `https://` with `cacert`,
//!   `http://` without; an `http://` endpoint with `cacert` is refused.
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
        /// TLS to etcd; `None`: plain HTTP.
        tls: Option<EtcdTls>,
    },
}

/// How a client speaks TLS to etcd: the CA that signed etcd's certificate and, for an etcd
/// that authenticates its clients, the client certificate and key (PEM files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    /// The client certificate and its key, or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
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
    #[error("store config option {0:?} is unknown (the options are prefix, cacert, cert, key)")]
    UnknownOption(String),
    #[error("store config {0:?}: cert and key go together, and need cacert")]
    PartialTls(String),
    #[error("store config {0:?}: a TLS option with an http:// endpoint")]
    TlsOverHttp(String),
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
            let (mut ca, mut cert, mut key) = (None, None, None);
            for option in options.into_iter().flat_map(|o| o.split('&')) {
                match option.split_once('=') {
                    Some(("prefix", value)) => prefix = value.to_owned(),
                    Some(("cacert", value)) => ca = Some(PathBuf::from(value)),
                    Some(("cert", value)) => cert = Some(PathBuf::from(value)),
                    Some(("key", value)) => key = Some(PathBuf::from(value)),
                    _ => return Err(ConfigError::UnknownOption(option.to_owned())),
                }
            }
            let tls = EtcdTls::from_parts(ca, cert, key)
                .map_err(|_| ConfigError::PartialTls(text.to_owned()))?;
            let endpoints = list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| normalize_endpoint(e, tls.is_some()))
                .collect::<Result<Vec<_>, _>>()?;
            if endpoints.is_empty() {
                return Err(ConfigError::NoEndpoints(text.to_owned()));
            }
            if tls.is_some() && endpoints.iter().any(|e| e.starts_with("http://")) {
                return Err(ConfigError::TlsOverHttp(text.to_owned()));
            }
            return Ok(StoreConfig::Etcd {
                endpoints,
                prefix,
                tls,
            });
        }
        Err(ConfigError::UnknownScheme(text.to_owned()))
    }
}

impl EtcdTls {
    /// The TLS options from their parts: `None` without any, `Err` for a partial set (a
    /// certificate without its key, or either without a CA).
    pub fn from_parts(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<EtcdTls>, &'static str> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), None, None) => Ok(Some(EtcdTls { ca, identity: None })),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(EtcdTls {
                ca,
                identity: Some((cert, key)),
            })),
            _ => Err("a client certificate and its key go together, and need a CA"),
        }
    }
}

impl StoreConfig {
    /// This config speaking TLS to etcd with `tls`, every endpoint over `https://` (a bare
    /// `host:port` was read as `http://`). A SQLite config is returned as it is.
    pub fn with_etcd_tls(self, tls: EtcdTls) -> StoreConfig {
        match self {
            StoreConfig::Etcd {
                endpoints, prefix, ..
            } => StoreConfig::Etcd {
                endpoints: endpoints
                    .into_iter()
                    .map(|e| match e.strip_prefix("http://") {
                        Some(authority) => format!("https://{authority}"),
                        None => e,
                    })
                    .collect(),
                prefix,
                tls: Some(tls),
            },
            sqlite => sqlite,
        }
    }
}

fn normalize_endpoint(endpoint: &str, tls: bool) -> Result<String, ConfigError> {
    let bad = || ConfigError::BadEndpoint(endpoint.to_owned());
    let (scheme, authority) = match endpoint.split_once("://") {
        Some((scheme, authority)) => (scheme, authority),
        None if tls => ("https", endpoint),
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
            StoreConfig::Etcd {
                endpoints,
                prefix,
                tls,
            } => {
                write!(f, "etcd:{}", endpoints.join(","))?;
                let mut options = Vec::new();
                if prefix != DEFAULT_ETCD_PREFIX {
                    options.push(format!("prefix={prefix}"));
                }
                if let Some(tls) = tls {
                    options.push(format!("cacert={}", tls.ca.display()));
                    if let Some((cert, key)) = &tls.identity {
                        options.push(format!("cert={}", cert.display()));
                        options.push(format!("key={}", key.display()));
                    }
                }
                if !options.is_empty() {
                    write!(f, "?{}", options.join("&"))?;
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
        StoreConfig::Etcd {
            endpoints,
            prefix,
            tls,
        } => Ok(Arc::new(
            EtcdStore::connect(endpoints, prefix, tls.as_ref()).await?,
        )),
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
                tls: None,
            })
        );
        assert_eq!(
            parse("etcd:http://a:1?prefix=/other"),
            Ok(StoreConfig::Etcd {
                endpoints: vec!["http://a:1".to_owned()],
                prefix: "/other".to_owned(),
                tls: None,
            })
        );
    }

    #[test]
    fn tls_options_name_the_ca_and_the_client_identity() {
        assert_eq!(
            parse("etcd:127.0.0.1:2379?cacert=/p/ca.crt&cert=/p/c.crt&key=/p/c.key"),
            Ok(StoreConfig::Etcd {
                endpoints: vec!["https://127.0.0.1:2379".to_owned()],
                prefix: "/corral".to_owned(),
                tls: Some(EtcdTls {
                    ca: "/p/ca.crt".into(),
                    identity: Some(("/p/c.crt".into(), "/p/c.key".into())),
                }),
            })
        );
        assert!(matches!(
            parse("etcd:a:1?cacert=/ca&cert=/c"),
            Err(ConfigError::PartialTls(_))
        ));
        assert!(matches!(
            parse("etcd:a:1?cert=/c&key=/k"),
            Err(ConfigError::PartialTls(_))
        ));
        assert!(matches!(
            parse("etcd:http://a:1?cacert=/ca"),
            Err(ConfigError::TlsOverHttp(_))
        ));
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
            "etcd:https://a:1?prefix=/p&cacert=/ca&cert=/c&key=/k",
            "etcd:https://a:1?cacert=/ca",
        ] {
            let config = parse(text).expect("parses");
            assert_eq!(config.to_string(), text);
            assert_eq!(parse(&config.to_string()), Ok(config));
        }
    }
}
