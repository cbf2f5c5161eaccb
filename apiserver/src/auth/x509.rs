//! The identity a client certificate carries, as Kubernetes reads it: the subject's Common
//! Name is the user, each Organization a group.
//!
//! Only certificates the TLS layer has already verified against the client CA reach
//! [`identity`]; this module reads, it does not verify.

use std::collections::BTreeMap;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::User;

/// What a certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// When it expires (seconds since the Unix epoch).
    pub not_after: i64,
    /// The DNS names and IP addresses its subject alternative names give (an IP address
    /// written canonically); names of other kinds are left out.
    pub alternative_names: Vec<String>,
}

/// The subject of the DER certificate `der`.
pub fn subject(der: &[u8]) -> Result<Subject, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let name = cert.subject();
    let text = |attribute: &x509_parser::x509::AttributeTypeAndValue| {
        attribute
            .as_str()
            .map(String::from)
            .map_err(|e| format!("a subject attribute is not a string: {e}"))
    };
    let common_name = match name.iter_common_name().next() {
        Some(cn) => text(cn)?,
        None => String::new(),
    };
    let organizations = name
        .iter_organization()
        .map(text)
        .collect::<Result<Vec<_>, _>>()?;
    let alternative_names = match cert.subject_alternative_name() {
        Ok(Some(names)) => names
            .value
            .general_names
            .iter()
            .filter_map(dns_or_ip)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("unreadable subject alternative names: {e}")),
    };
    Ok(Subject {
        common_name,
        organizations,
        not_after: cert.validity().not_after.timestamp(),
        alternative_names,
    })
}

/// A DNS name, or an IP address written canonically; `None` for any other kind of name.
fn dns_or_ip(name: &x509_parser::extensions::GeneralName) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(dns) => Some(dns.to_string()),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?),
                _ => return None,
            };
            Some(ip.to_string())
        }
        _ => None,
    }
}

/// The subject of the first certificate in PEM text `pem`.
pub fn subject_of_pem(pem: &str) -> Result<Subject, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    subject(&pem.contents)
}

/// The user a verified client certificate `der` authenticates (`None`: it names no user).
pub fn identity(der: &[u8]) -> Option<User> {
    let subject = subject(der).ok()?;
    if subject.common_name.is_empty() {
        return None;
    }
    Some(User {
        name: subject.common_name,
        uid: String::new(),
        groups: subject.organizations,
        extra: BTreeMap::new(),
    })
}
