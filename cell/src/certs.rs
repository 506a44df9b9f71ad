//! `cellctl certs init|issue`: a tiny internal PKI for node↔node and client mTLS.
//!
//! * `init_ca` creates a self-signed CA (`ca.pem` + `ca-key.pem`).
//! * `issue` creates a node certificate signed by that CA, usable both as a TLS
//!   server and a TLS client certificate, so one cert serves node↔node mTLS.
//!
//! All keys are ECDSA P-256 (rcgen's default), serial numbers are random, and
//! private keys are written with mode 0600 (on unix) via write-to-temp + rename.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Organization put into every subject we create.
const ORGANIZATION: &str = "marketcell";
/// Backdate `not_before` by this much to tolerate clock skew between nodes.
const CLOCK_SKEW: Duration = Duration::hours(1);
/// Upper bound on validity (100 years) to keep the date arithmetic sane.
const MAX_VALID_DAYS: u32 = 36_500;

/// Create an internal CA in `dir`: ca.pem (certificate) and ca-key.pem (private key, file mode 0600). Refuses to overwrite existing files unless `force`.
pub fn init_ca(dir: &Path, common_name: &str, valid_days: u32, force: bool) -> Result<()> {
    let common_name = common_name.trim();
    ensure!(!common_name.is_empty(), "CA common name must not be empty");
    check_valid_days(valid_days)?;

    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !force {
        refuse_existing(&[&cert_path, &key_path])?;
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity_and_serial(&mut params, valid_days);

    let key = KeyPair::generate().context("generating CA key pair")?;
    let cert = params
        .self_signed(&key)
        .context("self-signing CA certificate")?;

    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())
}

/// Issue a node certificate signed by the CA in `ca_dir` (ca.pem + ca-key.pem), written as <out_dir>/<name>.pem and <out_dir>/<name>-key.pem (0600).
/// `hosts` are DNS names and/or IP addresses (parse each: IP → IP SAN, else DNS SAN). The cert must be usable both as TLS server and TLS client certificate (EKU serverAuth + clientAuth; key usage digitalSignature + keyEncipherment), so the same cert serves node↔node mTLS.
pub fn issue(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    hosts: &[String],
    valid_days: u32,
    force: bool,
) -> Result<(PathBuf, PathBuf)> {
    validate_name(name)?;
    ensure!(
        !hosts.is_empty(),
        "at least one host (DNS name or IP address) is required"
    );
    check_valid_days(valid_days)?;
    let sans = hosts
        .iter()
        .map(|h| parse_host(h))
        .collect::<Result<Vec<_>>>()?;

    let cert_path = out_dir.join(format!("{name}.pem"));
    let key_path = out_dir.join(format!("{name}-key.pem"));
    // Never let a node cert/key (even with --force) clobber the CA's own files.
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    for out in [&cert_path, &key_path] {
        for ca in [&ca_cert_path, &ca_key_path] {
            ensure!(
                !same_file_path(out, ca),
                "{} would overwrite the CA file {}; pick another --name or --out-dir",
                out.display(),
                ca.display()
            );
        }
    }
    if !force {
        refuse_existing(&[&cert_path, &key_path])?;
    }

    // Load the CA.
    let ca_cert_pem = fs::read_to_string(&ca_cert_path)
        .with_context(|| format!("reading CA certificate {}", ca_cert_path.display()))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path)
        .with_context(|| format!("reading CA private key {}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("parsing CA private key {}", ca_key_path.display()))?;
    let ca_cert_der = CertificateDer::from(
        pem_cert_der(&ca_cert_pem)
            .with_context(|| format!("parsing CA certificate {}", ca_cert_path.display()))?,
    );
    let issuer = Issuer::from_ca_cert_der(&ca_cert_der, &ca_key)
        .with_context(|| format!("loading CA certificate {}", ca_cert_path.display()))?;

    // Build the node certificate.
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity_and_serial(&mut params, valid_days);

    let key = KeyPair::generate().context("generating node key pair")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing node certificate")?;

    // Sanity check before writing anything: the new cert must chain to ca.pem.
    // This catches a ca-key.pem that does not belong to ca.pem, or an expired CA.
    verify_chains_to(cert.der(), &ca_cert_der).with_context(|| {
        format!(
            "issued certificate does not verify against {} (does {} belong to it, and is the CA still valid?)",
            ca_cert_path.display(),
            ca_key_path.display()
        )
    })?;

    fs::create_dir_all(out_dir)
        .with_context(|| format!("creating directory {}", out_dir.display()))?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn check_valid_days(valid_days: u32) -> Result<()> {
    ensure!(
        (1..=MAX_VALID_DAYS).contains(&valid_days),
        "validity must be between 1 and {MAX_VALID_DAYS} days (got {valid_days})"
    );
    Ok(())
}

fn set_validity_and_serial(params: &mut CertificateParams, valid_days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + Duration::days(i64::from(valid_days));
    params.serial_number = Some(random_serial());
}

/// 128 random bits; top bit cleared so the DER INTEGER is positive and ≤ 16 bytes,
/// and never all-zero (serials must be positive).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    SerialNumber::from_slice(&bytes)
}

/// `[A-Za-z0-9._-]{1,64}`, not starting with '.'.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ensure!(
        ok,
        "invalid certificate name {name:?}: must match [A-Za-z0-9._-]{{1,64}} and not start with '.'"
    );
    Ok(())
}

/// IP address (optionally in `[v6]` form) → IP SAN; anything else → DNS SAN.
fn parse_host(host: &str) -> Result<SanType> {
    let host = host.trim();
    ensure!(!host.is_empty(), "empty host name");
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = host.len() <= 253
        && host.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        });
    ensure!(
        valid_dns,
        "invalid host {host:?}: expected an IP address or a DNS name"
    );
    let dns = host
        .to_ascii_lowercase()
        .try_into()
        .with_context(|| format!("invalid DNS name {host:?}"))?;
    Ok(SanType::DnsName(dns))
}

fn pem_cert_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("no PEM certificate found: {e}"))?;
    Ok(der.to_vec())
}

/// Verify `leaf` chains directly to `ca` as a TLS client certificate (the stricter
/// of the two uses we care about; server-name checks are the peer's business).
fn verify_chains_to(leaf: &CertificateDer<'_>, ca: &CertificateDer<'_>) -> Result<()> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone().into_owned())
        .map_err(|e| anyhow::anyhow!("CA certificate is not a usable trust anchor: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| anyhow::anyhow!("building verifier: {e}"))?;
    verifier
        .verify_client_cert(leaf, &[], UnixTime::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Same file name in the same directory (directories compared canonically when they exist).
fn same_file_path(a: &Path, b: &Path) -> bool {
    if a.file_name() != b.file_name() {
        return false;
    }
    let dir = |p: &Path| {
        let d = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::canonicalize(&d).unwrap_or(d)
    };
    dir(a) == dir(b)
}

fn refuse_existing(paths: &[&Path]) -> Result<()> {
    for p in paths {
        // symlink_metadata: a dangling symlink still counts as "exists".
        if fs::symlink_metadata(p).is_ok() {
            bail!(
                "{} already exists; refusing to overwrite (use --force)",
                p.display()
            );
        }
    }
    Ok(())
}

/// Write certificate + key via temp files, then rename key first and cert second,
/// so a failure never leaves a new cert next to a stale key.
fn write_pair(cert_path: &Path, cert_pem: &str, key_path: &Path, key_pem: &str) -> Result<()> {
    let key_tmp = write_temp(key_path, key_pem.as_bytes(), true)?;
    let cert_tmp = match write_temp(cert_path, cert_pem.as_bytes(), false) {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(&key_tmp);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&key_tmp, key_path) {
        let _ = fs::remove_file(&key_tmp);
        let _ = fs::remove_file(&cert_tmp);
        return Err(e).with_context(|| format!("writing {}", key_path.display()));
    }
    if let Err(e) = fs::rename(&cert_tmp, cert_path) {
        let _ = fs::remove_file(&cert_tmp);
        return Err(e).with_context(|| format!("writing {}", cert_path.display()));
    }
    Ok(())
}

/// Write `data` to a fresh temp file next to `dest` (mode 0600 if `private`, on unix),
/// fsync it, and return its path.
fn write_temp(dest: &Path, data: &[u8], private: bool) -> Result<PathBuf> {
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    let file_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .context("destination has no file name")?;
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));

    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;

    let result = (|| -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, ServerName};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn load_cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).expect("parse cert PEM")
    }

    fn roots_of(ca_dir: &Path) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(load_cert(&ca_dir.join(CA_CERT_FILE))).unwrap();
        Arc::new(roots)
    }

    fn hosts() -> Vec<String> {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    }

    #[test]
    fn certs_issue_chains_to_ca_as_server_and_client() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        let out_dir = tmp.path().join("nodes");
        init_ca(&ca_dir, "marketcell test CA", 30, false).unwrap();
        let (cert_path, key_path) = issue(&ca_dir, &out_dir, "node-1", &hosts(), 7, false).unwrap();
        assert_eq!(cert_path, out_dir.join("node-1.pem"));
        assert_eq!(key_path, out_dir.join("node-1-key.pem"));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [&ca_dir.join(CA_KEY_FILE), &key_path] {
                let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
            }
        }
        // No temp files left behind.
        for dir in [&ca_dir, &out_dir] {
            for entry in fs::read_dir(dir).unwrap() {
                let n = entry.unwrap().file_name();
                assert!(!n.to_string_lossy().starts_with('.'), "leftover {n:?}");
            }
        }

        let leaf = load_cert(&cert_path);
        let now = UnixTime::now();

        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots_of(&ca_dir), provider())
                .build()
                .unwrap();
        for name in [
            ServerName::try_from("localhost").unwrap(),
            ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into()),
        ] {
            server_verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("server verify for {name:?}: {e}"));
        }
        // A name not in the SANs must be rejected.
        assert!(server_verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("other.example").unwrap(),
                &[],
                now
            )
            .is_err());

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots_of(&ca_dir), provider())
                .build()
                .unwrap();
        client_verifier
            .verify_client_cert(&leaf, &[], now)
            .expect("client verify");

        // The key file parses and matches the cert (rustls checks key/cert consistency).
        let key = PrivateKeyDer::from_pem_file(&key_path).unwrap();
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.clone()], key.clone_key())
            .expect("server config with issued cert/key");
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots_of(&ca_dir))
            .with_client_auth_cert(vec![leaf], key)
            .expect("client config with issued cert/key");
    }

    #[test]
    fn certs_other_ca_fails_verification() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_a = tmp.path().join("ca-a");
        let ca_b = tmp.path().join("ca-b");
        init_ca(&ca_a, "CA A", 30, false).unwrap();
        // Same CN on purpose: name matching alone must not be enough.
        init_ca(&ca_b, "CA A", 30, false).unwrap();
        let (cert_b, _) = issue(&ca_b, tmp.path(), "node-b", &hosts(), 7, false).unwrap();
        let leaf = load_cert(&cert_b);
        let now = UnixTime::now();

        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots_of(&ca_a), provider())
                .build()
                .unwrap();
        assert!(server_verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                now
            )
            .is_err());
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots_of(&ca_a), provider())
                .build()
                .unwrap();
        assert!(client_verifier.verify_client_cert(&leaf, &[], now).is_err());
    }

    #[test]
    fn certs_mismatched_ca_key_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_a = tmp.path().join("ca-a");
        let ca_b = tmp.path().join("ca-b");
        init_ca(&ca_a, "CA", 30, false).unwrap();
        init_ca(&ca_b, "CA", 30, false).unwrap();
        fs::copy(ca_b.join(CA_KEY_FILE), ca_a.join(CA_KEY_FILE)).unwrap();
        let out = tmp.path().join("out");
        let err = issue(&ca_a, &out, "n", &hosts(), 7, false).unwrap_err();
        assert!(format!("{err:#}").contains("does not verify"), "{err:#}");
        assert!(!out.join("n.pem").exists() && !out.join("n-key.pem").exists());
    }

    #[test]
    fn certs_refuse_overwrite_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        init_ca(&ca_dir, "CA", 30, false).unwrap();
        let ca_before = fs::read(ca_dir.join(CA_CERT_FILE)).unwrap();
        let err = init_ca(&ca_dir, "CA", 30, false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read(ca_dir.join(CA_CERT_FILE)).unwrap(), ca_before);
        init_ca(&ca_dir, "CA", 30, true).unwrap();
        assert_ne!(fs::read(ca_dir.join(CA_CERT_FILE)).unwrap(), ca_before);

        let out = tmp.path().join("out");
        let (cert, _) = issue(&ca_dir, &out, "node", &hosts(), 7, false).unwrap();
        let before = fs::read(&cert).unwrap();
        let err = issue(&ca_dir, &out, "node", &hosts(), 7, false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read(&cert).unwrap(), before);
        issue(&ca_dir, &out, "node", &hosts(), 7, true).unwrap();
        assert_ne!(fs::read(&cert).unwrap(), before);
    }

    #[test]
    fn certs_never_clobber_ca_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        init_ca(&ca_dir, "CA", 30, false).unwrap();
        let ca_before = fs::read(ca_dir.join(CA_CERT_FILE)).unwrap();
        // <name>.pem == ca.pem when out_dir == ca_dir, even via a different spelling of the dir.
        let alias = tmp.path().join("ca/../ca");
        for out in [&ca_dir, &alias] {
            let err = issue(&ca_dir, out, "ca", &hosts(), 7, true).unwrap_err();
            assert!(err.to_string().contains("CA file"), "{err}");
        }
        assert_eq!(fs::read(ca_dir.join(CA_CERT_FILE)).unwrap(), ca_before);
        // Same name in another directory is fine.
        issue(&ca_dir, &tmp.path().join("out"), "ca", &hosts(), 7, false).unwrap();
    }

    #[test]
    fn certs_input_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        init_ca(&ca_dir, "CA", 30, false).unwrap();
        let out = tmp.path().join("out");
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(
                issue(&ca_dir, &out, bad, &hosts(), 7, false).is_err(),
                "name {bad:?} accepted"
            );
        }
        assert!(issue(&ca_dir, &out, "n", &[], 7, false).is_err());
        assert!(issue(&ca_dir, &out, "n", &["bad host".to_string()], 7, false).is_err());
        assert!(issue(&ca_dir, &out, "n", &hosts(), 0, false).is_err());
        assert!(init_ca(&tmp.path().join("ca2"), " ", 30, false).is_err());
        // IPv6 (bracketed or not) and wildcard DNS are fine.
        let hosts = vec![
            "[::1]".to_string(),
            "::1".to_string(),
            "*.cells.internal".to_string(),
        ];
        issue(&ca_dir, &out, "n6", &hosts, 7, false).unwrap();
    }

    #[test]
    fn certs_parse_host_kinds() {
        assert!(matches!(
            parse_host("10.0.0.1").unwrap(),
            SanType::IpAddress(_)
        ));
        assert!(matches!(
            parse_host("[fe80::1]").unwrap(),
            SanType::IpAddress(_)
        ));
        assert!(matches!(
            parse_host("node-1.cells.internal").unwrap(),
            SanType::DnsName(_)
        ));
        assert!(parse_host("a..b").is_err());
        assert!(parse_host("-a.b").is_err());
    }
}
