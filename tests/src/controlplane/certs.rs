//! The test cluster's PKI, made in-process with `rcgen`: one CA that signs the API
//! server's serving certificate and every client certificate (admin, nodes, controllers),
//! and the ServiceAccount token signing key. Files are PEM (keys PKCS#8), as the
//! Kubernetes components read them.
//!
//! ECDSA P-256 keys: quick to generate, and accepted by every component. Certificates are
//! issued concurrently by parallel tests: nothing is shared on disk but the CA's own files,
//! which are written once.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The cluster CA.
#[derive(Clone)]
pub struct Ca {
    pub pair: KeyPair,
    dir: PathBuf,
    signer: Arc<Signer>,
}

/// What signs: the CA's parameters (its name, key identifier method) and private key.
struct Signer {
    params: CertificateParams,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("pair", &self.pair).finish()
    }
}

/// What a leaf certificate is for.
pub enum Usage<'a> {
    /// A TLS server with these DNS names and IP addresses.
    Server {
        dns: &'a [&'a str],
        ips: &'a [IpAddr],
    },
    /// A client: the user is the common name, the group (at most one: an rcgen
    /// distinguished name holds one value per attribute) the organization.
    Client {
        user: &'a str,
        groups: &'a [&'a str],
    },
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A random positive 128-bit serial number.
fn serial() -> rcgen::SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// Creates a self-signed CA in `dir` (files `ca.crt`, `ca.key`).
    pub fn create(dir: &Path) -> Result<Ca> {
        std::fs::create_dir_all(dir)?;
        let pair = KeyPair {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        let key = rcgen::KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "workpool-test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).context("signing the CA")?;
        write(&pair.cert, &cert.pem())?;
        write(&pair.key, &key.serialize_pem())?;
        Ok(Ca {
            pair,
            dir: dir.to_path_buf(),
            signer: Arc::new(Signer { params, key }),
        })
    }

    /// Issues a leaf certificate named `name` (files `<name>.crt`, `<name>.key` beside
    /// the CA).
    pub fn issue(&self, name: &str, usage: Usage<'_>) -> Result<KeyPair> {
        let pair = KeyPair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        let key = rcgen::KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        match usage {
            Usage::Server { dns, ips } => {
                params.distinguished_name.push(DnType::CommonName, name);
                for d in dns {
                    params.subject_alt_names.push(SanType::DnsName(
                        (*d).try_into()
                            .with_context(|| format!("DNS name {d:?} of {name}"))?,
                    ));
                }
                params
                    .subject_alt_names
                    .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Usage::Client { user, groups } => {
                match groups {
                    [] => {}
                    [group] => params
                        .distinguished_name
                        .push(DnType::OrganizationName, *group),
                    more => bail!(
                        "certificate {name}: at most one group, not {more:?} (one organization per name)"
                    ),
                }
                params.distinguished_name.push(DnType::CommonName, user);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial());
        let issuer = Issuer::from_params(&self.signer.params, &self.signer.key);
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing {name}"))?;
        write(&pair.key, &key.serialize_pem())?;
        write(&pair.cert, &cert.pem())?;
        Ok(pair)
    }
}

/// Writes the ServiceAccount token signing key pair: `sa.key` (private, PKCS#8) and
/// `sa.pub` (public) in `dir`.
pub fn service_account_keys(dir: &Path) -> Result<KeyPair> {
    let key = dir.join("sa.key");
    let public = dir.join("sa.pub");
    let pair = rcgen::KeyPair::generate().context("generating the ServiceAccount key")?;
    write(&key, &pair.serialize_pem())?;
    write(&public, &pair.public_key_pem())?;
    Ok(KeyPair { cert: public, key })
}
