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
//! | `etcd/ca.crt`, `etcd/ca.key` | etcd's own CA (with `--etcd-member`): etcd trusts it alone |
//! | `etcd/MEMBER.crt`, `.key` | etcd member MEMBER's certificate, for clients and peers alike: serverAuth and clientAuth, its host, `127.0.0.1` and `localhost` |
//! | `etcd/apiserver-client.crt`, `.key` | the API servers' client identity to etcd (CN `corral-apiserver`) |
//!
//! etcd's CA is not the rack's: etcd with `--client-cert-auth` admits any certificate its CA
//! signed, so trusting the rack's CA would let every sled's agent reach the store directly,
//! past the API server's authorization (kubeadm keeps an etcd CA for the same reason).
//!
//! Every kubeconfig names the first `--server` in `clusters[0].cluster.server`; with more
//! than one it also lists them all, in order, in the cluster extension `corral.dev/servers`
//! (`extension.servers`), which kubectl ignores and Corral's clients fail over with.
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
//!   still holds the previous one stays valid: the CA is the same). An etcd member's
//!   certificate is kept while it has more than 30 days left and names exactly the hosts
//!   asked, so running it again to add a user does not change what the etcd machines hold.
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
use corral_client::failover::SERVERS_EXTENSION;

const CA_DAYS: i64 = 10 * 365;
const LEAF_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 30;

/// The CN of the power controllers' serving certificate.
pub const POWER_CONTROLLER_USER: &str = "system:corral:power-controller";

/// The CN of the API servers' client certificate to etcd (`etcd/apiserver-client.crt`).
pub const ETCD_CLIENT_USER: &str = "corral-apiserver";

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
    /// The rack's CA in `dir`, created (with the directory) if it does not exist yet.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Pki> {
        Pki::open_or_create_named(dir, "corral-ca")
    }

    /// etcd's CA in `dir` (`DIR/etcd` of the rack's), created if it does not exist yet.
    pub fn open_or_create_etcd(dir: &Path) -> anyhow::Result<Pki> {
        Pki::open_or_create_named(dir, "corral-etcd-ca")
    }

    /// The CA in `dir`, or a new one whose subject is `common_name`.
    fn open_or_create_named(dir: &Path, common_name: &str) -> anyhow::Result<Pki> {
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
            params.distinguished_name = name(common_name, &[]);
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

    /// The certificate of etcd member `member` (`MEMBER.crt`), which it serves clients and
    /// peers with and presents to its peers: serverAuth and clientAuth, for `hosts`. Kept
    /// while it has more than 30 days left and names exactly `hosts`.
    pub fn etcd_member(&self, member: &str, hosts: &[String]) -> anyhow::Result<ClientFiles> {
        let files = self.files(member);
        if still_valid(&files.cert, member, &[])? && names_exactly(&files.cert, hosts)? {
            return Ok(files);
        }
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = name(member, &[]);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(member, params)
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

    /// Writes `NAME.kubeconfig`: the API servers `servers` (the first one first), this CA,
    /// the identity `files`.
    pub fn kubeconfig(
        &self,
        file: &str,
        servers: &[String],
        files: &ClientFiles,
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{file}.kubeconfig"));
        write_secret(&path, &self.kubeconfig_text(servers, files)?)?;
        Ok(path)
    }

    /// A kubeconfig for `servers` with the CA and the identity `files` embedded, namespace
    /// `default`. `cluster.server` is the first server; with more than one, the cluster's
    /// `corral.dev/servers` extension lists them all.
    pub fn kubeconfig_text(
        &self,
        servers: &[String],
        files: &ClientFiles,
    ) -> anyhow::Result<String> {
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let server = servers
            .first()
            .context("a kubeconfig needs at least one server")?;
        let mut extensions = String::new();
        if servers.len() > 1 {
            extensions.push_str(&format!(
                "    extensions:\n    - name: {SERVERS_EXTENSION}\n      extension:\n        servers:\n"
            ));
            for server in servers {
                extensions.push_str(&format!("        - {server}\n"));
            }
        }
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: corral\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n{extensions}contexts:\n- name: corral\n  context:\n    cluster: corral\n    user: corral\n    namespace: default\ncurrent-context: corral\nusers:\n- name: corral\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
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

/// Whether the certificate at `path` names exactly `hosts` (DNS names or IP addresses, in any
/// order) as its subject alternative names.
fn names_exactly(path: &Path, hosts: &[String]) -> anyhow::Result<bool> {
    let Ok(subject) = x509::subject_of_pem(&read(path)?) else {
        return Ok(false);
    };
    let mut named = subject.alternative_names;
    // Asked hosts are compared as the certificate spells them: an IP address canonically.
    let mut asked: Vec<String> = hosts
        .iter()
        .map(|host| {
            host.parse::<std::net::IpAddr>()
                .map_or_else(|_| host.clone(), |ip| ip.to_string())
        })
        .collect();
    named.sort();
    named.dedup();
    asked.sort();
    asked.dedup();
    Ok(named == asked)
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
    /// An API server's URL; repeatable, one per API server. Every kubeconfig names the first
    /// as its server and, with more than one, lists them all in its `corral.dev/servers`
    /// cluster extension; the serving certificate covers the host of each.
    #[arg(long = "server", default_value = "https://127.0.0.1:6443")]
    pub servers: Vec<String>,
    /// More host names or IP addresses the API server is reached at (besides localhost,
    /// 127.0.0.1, ::1 and the host of each --server).
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
    /// An etcd member, `NAME=HOST` (HOST an IP address or DNS name); repeatable. Makes etcd's
    /// own CA in `DIR/etcd`, the member's certificate `DIR/etcd/NAME.crt` (clients and peers;
    /// HOST, 127.0.0.1 and localhost) and the API servers' client identity to etcd,
    /// `DIR/etcd/apiserver-client.crt`.
    #[arg(long = "etcd-member")]
    pub etcd_members: Vec<String>,
}

/// What `corral certs` (and `corral up`) make: the CA, the serving certificates (the API
/// server's, the power controllers', each node's), the kubeconfigs of `admin`, the
/// controllers, each node and each user asked for, and with `--etcd-member` etcd's CA and
/// certificates. Returns the kubeconfigs and etcd's certificates it wrote or kept.
pub fn make(args: &CertsArgs) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(!args.servers.is_empty(), "--server: at least one is needed");
    let members = etcd_members(&args.etcd_members)?;
    let pki = Pki::open_or_create(&args.dir)?;
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    hosts.extend(args.servers.iter().filter_map(|server| host_of(server)));
    hosts.extend(args.hosts.iter().cloned());
    hosts.sort();
    hosts.dedup();
    pki.serving(&hosts)?;
    pki.power_controller_serving(&hosts)?;
    let servers = &args.servers;
    let mut written = Vec::new();
    let admin = pki.client("admin", "admin", &[identities::MASTERS_GROUP])?;
    written.push(pki.kubeconfig("admin", servers, &admin)?);
    let controllers = pki.client("controllers", identities::CONTROLLERS_USER, &[])?;
    written.push(pki.kubeconfig("controllers", servers, &controllers)?);
    for sled in &args.nodes {
        let node = pki.node(sled)?;
        pki.node_serving(sled, &hosts)?;
        written.push(pki.kubeconfig(&format!("node-{sled}"), servers, &node)?);
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
        written.push(pki.kubeconfig(user, servers, &files)?);
    }
    if !members.is_empty() {
        let etcd = Pki::open_or_create_etcd(&args.dir.join("etcd"))?;
        for (member, host) in &members {
            let mut member_hosts = vec![host.clone(), "127.0.0.1".into(), "localhost".into()];
            member_hosts.sort();
            member_hosts.dedup();
            written.push(etcd.etcd_member(member, &member_hosts)?.cert);
        }
        written.push(etcd.client(ETCD_CLIENT_FILE, ETCD_CLIENT_USER, &[])?.cert);
    }
    Ok(written)
}

/// The file name (without `.crt`/`.key`) of the API servers' client identity to etcd.
const ETCD_CLIENT_FILE: &str = "apiserver-client";

/// `--etcd-member NAME=HOST` flags as (name, host) pairs, refusing an empty or repeated name,
/// one that would overwrite another file of `DIR/etcd`, and an empty host.
fn etcd_members(flags: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut members: Vec<(String, String)> = Vec::new();
    for flag in flags {
        let Some((member, host)) = flag.split_once('=') else {
            anyhow::bail!("--etcd-member {flag}: expected NAME=HOST");
        };
        anyhow::ensure!(
            !member.is_empty()
                && member
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !member.starts_with('.'),
            "--etcd-member {flag}: the name must be letters, digits, '-', '_' or '.'"
        );
        anyhow::ensure!(
            member != "ca" && member != ETCD_CLIENT_FILE,
            "--etcd-member {flag}: `{member}` is taken by another file of DIR/etcd"
        );
        anyhow::ensure!(!host.is_empty(), "--etcd-member {flag}: the host is empty");
        anyhow::ensure!(
            members.iter().all(|(other, _)| other != member),
            "--etcd-member {flag}: {member} is given twice"
        );
        members.push((member.to_string(), host.to_string()));
    }
    Ok(members)
}

/// `corral certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let written = make(&args)?;
    println!("CA and serving certificate in {}", args.dir.display());
    if !args.etcd_members.is_empty() {
        println!("etcd's CA in {}", args.dir.join("etcd").display());
    }
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
            servers: vec!["https://127.0.0.1:6443".into()],
            hosts: vec![],
            nodes: vec!["sled-1".into()],
            users: vec!["alice:corral:tenants".into()],
            etcd_members: vec![],
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

    fn args(dir: &Path, servers: &[&str], etcd_members: &[&str]) -> CertsArgs {
        CertsArgs {
            dir: dir.to_path_buf(),
            servers: servers.iter().map(|server| server.to_string()).collect(),
            hosts: vec![],
            nodes: vec!["sled-1".into()],
            users: vec![],
            etcd_members: etcd_members
                .iter()
                .map(|member| member.to_string())
                .collect(),
        }
    }

    /// The issuer's CN, the subject alternative names and the extended key usages
    /// (serverAuth, clientAuth) of the certificate at `path`.
    fn inspect(path: &Path) -> (String, Vec<String>, (bool, bool)) {
        let pem = read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let issuer = cert
            .issuer()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        let mut names = x509::subject_of_pem(&read(path).unwrap())
            .unwrap()
            .alternative_names;
        names.sort();
        let usage = cert.extended_key_usage().unwrap().unwrap().value;
        (issuer, names, (usage.server_auth, usage.client_auth))
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn kubeconfigs_name_the_first_server_and_list_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let servers = ["https://10.0.0.1:6443", "https://api-2.rack:6443"];
        make(&args(dir.path(), &servers, &[])).unwrap();
        for file in ["admin", "controllers", "node-sled-1"] {
            let path = dir.path().join(format!("{file}.kubeconfig"));
            let config = kube::config::Kubeconfig::read_from(&path).unwrap();
            let cluster = config.clusters[0].cluster.as_ref().unwrap();
            assert_eq!(cluster.server.as_deref(), Some(servers[0]), "{file}");
            let extensions = cluster.extensions.as_ref().unwrap();
            assert_eq!(extensions.len(), 1);
            assert_eq!(extensions[0].name, SERVERS_EXTENSION);
            assert_eq!(
                extensions[0].extension,
                serde_json::json!({ "servers": servers })
            );
        }
        // The serving certificate covers every server's host.
        let (_, names, _) = inspect(&dir.path().join("apiserver.crt"));
        assert_eq!(
            names,
            ["10.0.0.1", "127.0.0.1", "::1", "api-2.rack", "localhost"]
        );
        // One server: no extension, the kubeconfig as it always was.
        let single = tempfile::tempdir().unwrap();
        make(&args(single.path(), &[servers[0]], &[])).unwrap();
        let text = read(&single.path().join("admin.kubeconfig")).unwrap();
        assert!(!text.contains("extensions"), "{text}");
    }

    #[test]
    fn etcd_has_a_ca_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let members = ["etcd-1=10.0.0.1", "etcd-2=etcd-2.rack"];
        make(&args(dir.path(), &["https://10.0.0.1:6443"], &members)).unwrap();
        let etcd = dir.path().join("etcd");
        assert_ne!(
            read(&etcd.join("ca.crt")).unwrap(),
            read(&dir.path().join("ca.crt")).unwrap()
        );
        let (issuer, names, usage) = inspect(&etcd.join("etcd-1.crt"));
        assert_eq!(issuer, "corral-etcd-ca");
        assert_eq!(
            usage,
            (true, true),
            "a member serves and is a peer's client"
        );
        assert_eq!(names, ["10.0.0.1", "127.0.0.1", "localhost"]);
        let (_, names, _) = inspect(&etcd.join("etcd-2.crt"));
        assert_eq!(names, ["127.0.0.1", "etcd-2.rack", "localhost"]);
        let (issuer, _, usage) = inspect(&etcd.join("apiserver-client.crt"));
        assert_eq!(issuer, "corral-etcd-ca");
        assert_eq!(usage, (false, true));
        let client = x509::subject_of_pem(&read(&etcd.join("apiserver-client.crt")).unwrap());
        assert_eq!(client.unwrap().common_name, ETCD_CLIENT_USER);
        // Nothing of the rack's is signed by etcd's CA, nor the other way round.
        assert_eq!(inspect(&dir.path().join("node-sled-1.crt")).0, "corral-ca");
        for file in ["ca.key", "etcd-1.key", "etcd-2.key", "apiserver-client.key"] {
            assert_eq!(mode(&etcd.join(file)), 0o600, "{file}");
        }

        // Again with the same members: everything of etcd's is kept.
        let kept = |file: &str| read(&etcd.join(file)).unwrap();
        let before = ["ca.crt", "etcd-1.crt", "etcd-2.crt", "apiserver-client.crt"].map(kept);
        make(&args(dir.path(), &["https://10.0.0.1:6443"], &members)).unwrap();
        let after = ["ca.crt", "etcd-1.crt", "etcd-2.crt", "apiserver-client.crt"].map(kept);
        assert_eq!(before, after);

        // A member that moved gets a new certificate for its new host, from the same CA.
        let moved = ["etcd-1=10.0.0.9", "etcd-2=etcd-2.rack"];
        make(&args(dir.path(), &["https://10.0.0.1:6443"], &moved)).unwrap();
        assert_eq!(kept("ca.crt"), before[0]);
        assert_eq!(kept("etcd-2.crt"), before[2]);
        let (_, names, _) = inspect(&etcd.join("etcd-1.crt"));
        assert_eq!(names, ["10.0.0.9", "127.0.0.1", "localhost"]);
    }

    #[test]
    fn etcd_members_are_refused_when_malformed() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            vec!["etcd-1"],
            vec!["=10.0.0.1"],
            vec!["etcd-1="],
            vec!["../x=10.0.0.1"],
            vec!["ca=10.0.0.1"],
            vec!["apiserver-client=10.0.0.1"],
            vec!["etcd-1=10.0.0.1", "etcd-1=10.0.0.2"],
        ] {
            let error = make(&args(dir.path(), &["https://127.0.0.1:6443"], &bad));
            assert!(error.is_err(), "{bad:?} was accepted");
        }
        assert!(!dir.path().join("etcd").exists());
    }
}
