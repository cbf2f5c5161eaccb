//! `corral certs`: the rack's certificate authority, the identities it issues, and the
//! kubeconfigs that carry them.
//!
//! One directory (`DATA/pki` for `corral up`) holds everything:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the CA (ECDSA P-256, 10 years); every client and server trusts `ca.crt` |
//! | `apiserver.crt`, `apiserver.key` | the API server's serving certificate (its host names and IPs) |
//! | `node-SLED-serving.crt`, `.key` | the serving certificate of sled SLED's endpoints (fault, migration): CN `system:node:SLED`, O `system:nodes`, the same hosts |
//! | `power-controller.crt`, `.key` | the power controllers' serving certificate: CN `system:corral:power-controller`, the same hosts |
//! | `NAME.crt`, `NAME.key`, `NAME.kubeconfig` | a client identity: CN = user, O = groups |
//!
//! The identities are Kubernetes' conventions: `admin` in `system:masters` (all rights),
//! `system:corral:controllers` for the controllers, `system:node:SLED` in `system:nodes` for
//! each sled's agent — as a client, and (like a kubelet's serving certificate) as the server
//! of the sled's own endpoints.
//!
//! # Invariants
//!
//! - Idempotent: an existing CA is kept (so every certificate it issued stays valid); an
//!   existing client certificate is kept while it has more than 30 days left; the serving
//!   certificates are issued again whenever asked, for exactly the names asked (a server that
//!   still holds the previous one stays valid: the CA is the same).
//! - Keys are written `0600` before anything refers to them; a kubeconfig embeds its
//!   credentials, so it is a secret as well (`0600`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use corral_apiserver::auth::{identities, x509};

const CA_DAYS: i64 = 10 * 365;
const LEAF_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 30;

/// The CN of the power controllers' serving certificate.
pub const POWER_CONTROLLER_USER: &str = "system:corral:power-controller";

/// The rack's CA, opened from (or created in) its directory.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A client identity as files.
#[derive(Clone, Debug)]
pub struct ClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// The CA in `dir`, created (with the directory) if it does not exist yet.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (ca_pem, key) = if cert_path.exists() {
            let ca_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?)
                .with_context(|| format!("{}: not a private key", key_path.display()))?;
            (ca_pem, key)
        } else {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name = name("corral-ca", &[]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            valid_for(&mut params, CA_DAYS)?;
            let cert = params.self_signed(&key)?;
            write_secret(&key_path, &key.serialize_pem())?;
            write_public(&cert_path, &cert.pem())?;
            (cert.pem(), key)
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
            .with_context(|| format!("{}: not a CA certificate", cert_path.display()))?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            issuer,
        })
    }

    /// Issues the API server's serving certificate for `hosts` (DNS names or IP addresses),
    /// replacing the previous one; returns (cert, key) paths.
    pub fn serving(&self, hosts: &[String]) -> anyhow::Result<ClientFiles> {
        self.server("apiserver", "corral-apiserver", &[], hosts)
    }

    /// Issues the serving certificate of sled `sled`'s endpoints, `node-SLED-serving.crt`:
    /// CN `system:node:SLED`, O `system:nodes` (a kubelet's serving certificate), for `hosts`.
    pub fn node_serving(&self, sled: &str, hosts: &[String]) -> anyhow::Result<ClientFiles> {
        self.server(
            &format!("node-{sled}-serving"),
            &identities::node_user(sled),
            &[identities::NODES_GROUP],
            hosts,
        )
    }

    /// Issues the power controllers' serving certificate, `power-controller.crt`, for `hosts`.
    pub fn power_controller_serving(&self, hosts: &[String]) -> anyhow::Result<ClientFiles> {
        self.server("power-controller", POWER_CONTROLLER_USER, &[], hosts)
    }

    /// A serving certificate `file` for `hosts` (DNS names or IP addresses), naming `user` in
    /// `groups`, replacing the previous one.
    fn server(
        &self,
        file: &str,
        user: &str,
        groups: &[&str],
        hosts: &[String],
    ) -> anyhow::Result<ClientFiles> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = name(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client identity `user` in `groups`, kept in `NAME.crt`/`NAME.key`.
    pub fn client(&self, file: &str, user: &str, groups: &[&str]) -> anyhow::Result<ClientFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let files = self.files(file);
        if still_valid(&files.cert, user, groups)? {
            return Ok(files);
        }
        self.issue(file, params)
    }

    /// The identity of sled `sled`'s agent (`system:node:SLED` in `system:nodes`).
    pub fn node(&self, sled: &str) -> anyhow::Result<ClientFiles> {
        self.client(
            &format!("node-{sled}"),
            &identities::node_user(sled),
            &[identities::NODES_GROUP],
        )
    }

    /// Writes `NAME.kubeconfig`: the server at `server`, this CA, the identity `files`.
    pub fn kubeconfig(
        &self,
        file: &str,
        server: &str,
        files: &ClientFiles,
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{file}.kubeconfig"));
        write_secret(&path, &self.kubeconfig_text(server, files)?)?;
        Ok(path)
    }

    /// A kubeconfig for `server` with the CA and the identity `files` embedded, namespace
    /// `default`.
    pub fn kubeconfig_text(&self, server: &str, files: &ClientFiles) -> anyhow::Result<String> {
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: corral\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: corral\n  context:\n    cluster: corral\n    user: corral\n    namespace: default\ncurrent-context: corral\nusers:\n- name: corral\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
            ca = b64(&self.ca_pem),
            cert = b64(&cert),
            key = b64(&key),
        ))
    }

    fn files(&self, file: &str) -> ClientFiles {
        ClientFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        }
    }

    /// Issues `params` to a new key, written to `FILE.crt`/`FILE.key`.
    fn issue(&self, file: &str, mut params: CertificateParams) -> anyhow::Result<ClientFiles> {
        let files = self.files(file);
        valid_for(&mut params, LEAF_DAYS)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_secret(&files.key, &key.serialize_pem())?;
        write_public(&files.cert, &cert.pem())?;
        Ok(files)
    }
}

/// Whether the certificate at `path` exists, names `user` in `groups` and has more than
/// [`RENEW_BEFORE_DAYS`] left.
fn still_valid(path: &Path, user: &str, groups: &[&str]) -> anyhow::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let Ok(subject) = x509::subject_of_pem(&read(path)?) else {
        return Ok(false);
    };
    let renew = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(RENEW_BEFORE_DAYS * 24))?;
    Ok(subject.common_name == user
        && subject.organizations == groups
        && subject.not_after > renew.as_second())
}

fn name(common: &str, organizations: &[&str]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    for organization in organizations {
        name.push(DnType::OrganizationName, *organization);
    }
    name
}

/// Valid from the start of yesterday (clocks of a rack disagree a little) for `days`.
fn valid_for(params: &mut CertificateParams, days: i64) -> anyhow::Result<()> {
    let ymd = |at: jiff::Timestamp| {
        let date = at.to_zoned(jiff::tz::TimeZone::UTC).date();
        rcgen::date_time_ymd(date.year().into(), date.month() as u8, date.day() as u8)
    };
    let now = jiff::Timestamp::now();
    params.not_before = ymd(now.checked_sub(jiff::SignedDuration::from_hours(24))?);
    params.not_after = ymd(now.checked_add(jiff::SignedDuration::from_hours(days * 24))?);
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret: created `0600`, replaced through a temporary file so a reader never sees
/// half a key.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Where the CA, the certificates and the kubeconfigs are kept (made if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// The API server's URL the kubeconfigs name (its host is also put in the serving
    /// certificate).
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    pub server: String,
    /// More host names or IP addresses the API server is reached at (besides localhost,
    /// 127.0.0.1, ::1 and the host of --server).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Issue the identity of this sled's agent (`node-SLED.kubeconfig`) and the serving
    /// certificate of its endpoints (`node-SLED-serving.crt`, for the same hosts as the API
    /// server's); repeatable.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Issue a user identity, `NAME` or `NAME:GROUP[,GROUP...]` (`NAME.kubeconfig`);
    /// repeatable.
    #[arg(long = "user")]
    pub users: Vec<String>,
}

/// What `corral certs` (and `corral up`) make: the CA, the serving certificates (the API
/// server's, the power controllers', each node's), and the kubeconfigs of `admin`, the
/// controllers, each node and each user asked for.
pub fn make(args: &CertsArgs) -> anyhow::Result<Vec<PathBuf>> {
    let pki = Pki::open_or_create(&args.dir)?;
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = host_of(&args.server) {
        hosts.push(host);
    }
    hosts.extend(args.hosts.iter().cloned());
    hosts.sort();
    hosts.dedup();
    pki.serving(&hosts)?;
    pki.power_controller_serving(&hosts)?;
    let mut written = Vec::new();
    let admin = pki.client("admin", "admin", &[identities::MASTERS_GROUP])?;
    written.push(pki.kubeconfig("admin", &args.server, &admin)?);
    let controllers = pki.client("controllers", identities::CONTROLLERS_USER, &[])?;
    written.push(pki.kubeconfig("controllers", &args.server, &controllers)?);
    for sled in &args.nodes {
        let node = pki.node(sled)?;
        pki.node_serving(sled, &hosts)?;
        written.push(pki.kubeconfig(&format!("node-{sled}"), &args.server, &node)?);
    }
    for spec in &args.users {
        let (user, groups) = match spec.split_once(':') {
            Some((user, groups)) => (user, groups.split(',').filter(|g| !g.is_empty()).collect()),
            None => (spec.as_str(), Vec::new()),
        };
        anyhow::ensure!(
            !user.is_empty() && !user.contains('/'),
            "--user {spec}: the name must not be empty or contain '/'"
        );
        let files = pki.client(user, user, &groups)?;
        written.push(pki.kubeconfig(user, &args.server, &files)?);
    }
    Ok(written)
}

/// `corral certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let written = make(&args)?;
    println!("CA and serving certificate in {}", args.dir.display());
    for path in written {
        println!("  {}", path.display());
    }
    Ok(())
}

/// The host of `url` (`https://HOST:PORT/...`), without brackets for IPv6.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_out_of_urls() {
        assert_eq!(
            host_of("https://127.0.0.1:6443").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(host_of("https://[::1]:6443/x").as_deref(), Some("::1"));
        assert_eq!(
            host_of("https://api.rack:6443").as_deref(),
            Some("api.rack")
        );
        assert_eq!(host_of("https://api.rack").as_deref(), Some("api.rack"));
    }

    #[test]
    fn a_ca_issues_identities_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let args = CertsArgs {
            dir: dir.path().to_path_buf(),
            server: "https://127.0.0.1:6443".into(),
            hosts: vec![],
            nodes: vec!["sled-1".into()],
            users: vec!["alice:corral:tenants".into()],
        };
        make(&args).unwrap();
        let node =
            x509::subject_of_pem(&read(&dir.path().join("node-sled-1.crt")).unwrap()).unwrap();
        assert_eq!(node.common_name, "system:node:sled-1");
        assert_eq!(node.organizations, vec!["system:nodes"]);
        let serving =
            x509::subject_of_pem(&read(&dir.path().join("node-sled-1-serving.crt")).unwrap())
                .unwrap();
        assert_eq!(serving.common_name, "system:node:sled-1");
        assert_eq!(serving.organizations, vec!["system:nodes"]);
        let power =
            x509::subject_of_pem(&read(&dir.path().join("power-controller.crt")).unwrap()).unwrap();
        assert_eq!(power.common_name, POWER_CONTROLLER_USER);
        let alice = read(&dir.path().join("alice.crt")).unwrap();
        assert_eq!(
            x509::subject_of_pem(&alice).unwrap().organizations,
            vec!["corral:tenants"]
        );
        let ca = read(&dir.path().join("ca.crt")).unwrap();
        // Again: the CA and the client identities are kept.
        make(&args).unwrap();
        assert_eq!(read(&dir.path().join("ca.crt")).unwrap(), ca);
        assert_eq!(read(&dir.path().join("alice.crt")).unwrap(), alice);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
