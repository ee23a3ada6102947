//! The test cluster's PKI, made with the `openssl` command line tool: one CA that signs
//! the API server's serving certificate and every client certificate (admin, nodes,
//! controllers), and the ServiceAccount token signing key.
//!
//! ECDSA P-256 keys: quick to generate, and accepted by every component.

use anyhow::{Context, Result, bail};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The cluster CA.
#[derive(Debug, Clone)]
pub struct Ca {
    pub pair: KeyPair,
    dir: PathBuf,
}

fn openssl(args: &[&str], cwd: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .context("running openssl (Debian package `openssl`)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// Writes an EC P-256 private key (PKCS#8 PEM).
fn new_key(key: &Path, cwd: &Path) -> Result<()> {
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(key)?,
        ],
        cwd,
    )
}

/// Escapes a value for an OpenSSL `-subj` string (`/` and `\` are special).
fn subj_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('/', "\\/")
}

/// What a leaf certificate is for.
pub enum Usage<'a> {
    /// A TLS server with these DNS names and IP addresses.
    Server {
        dns: &'a [&'a str],
        ips: &'a [IpAddr],
    },
    /// A client: the user is the common name, the groups are organizations.
    Client {
        user: &'a str,
        groups: &'a [&'a str],
    },
}

impl Ca {
    /// Creates a self-signed CA in `dir` (files `ca.crt`, `ca.key`).
    pub fn create(dir: &Path) -> Result<Ca> {
        std::fs::create_dir_all(dir)?;
        let pair = KeyPair {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        new_key(&pair.key, dir)?;
        let ext = dir.join("ca.ext");
        std::fs::write(
            &ext,
            "[req]\ndistinguished_name = dn\n[dn]\n[ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n\
             subjectKeyIdentifier = hash\n",
        )?;
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-config",
                path_str(&ext)?,
                "-extensions",
                "ca",
                "-key",
                path_str(&pair.key)?,
                "-subj",
                "/CN=workpool-test-ca",
                "-days",
                "3650",
                "-out",
                path_str(&pair.cert)?,
            ],
            dir,
        )?;
        Ok(Ca {
            pair,
            dir: dir.to_path_buf(),
        })
    }

    /// Issues a leaf certificate named `name` (files `<name>.crt`, `<name>.key` beside
    /// the CA).
    pub fn issue(&self, name: &str, usage: Usage<'_>) -> Result<KeyPair> {
        let dir = &self.dir;
        let pair = KeyPair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        new_key(&pair.key, dir)?;
        let (subject, ext) = match usage {
            Usage::Server { dns, ips } => {
                let mut alt: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
                alt.extend(ips.iter().map(|ip| format!("IP:{ip}")));
                (
                    format!("/CN={}", subj_value(name)),
                    format!(
                        "extendedKeyUsage = serverAuth\nsubjectAltName = {}\n",
                        alt.join(",")
                    ),
                )
            }
            Usage::Client { user, groups } => {
                let mut s = String::new();
                for g in groups {
                    s.push_str(&format!("/O={}", subj_value(g)));
                }
                s.push_str(&format!("/CN={}", subj_value(user)));
                (s, "extendedKeyUsage = clientAuth\n".to_string())
            }
        };
        let csr = dir.join(format!("{name}.csr"));
        let ext_file = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext_file,
            format!(
                "[leaf]\nbasicConstraints = critical,CA:FALSE\n\
                 keyUsage = critical,digitalSignature,keyEncipherment\n{ext}"
            ),
        )?;
        openssl(
            &[
                "req",
                "-new",
                "-key",
                path_str(&pair.key)?,
                "-subj",
                &subject,
                "-out",
                path_str(&csr)?,
            ],
            dir,
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr)?,
                "-CA",
                path_str(&self.pair.cert)?,
                "-CAkey",
                path_str(&self.pair.key)?,
                // A random serial, not -CAcreateserial: certificates issued at the same
                // time (parallel tests) raced on the shared ca.srl ("Unable to load number").
                "-set_serial",
                &format!(
                    "0x{:016x}{:016x}",
                    rand::random::<u64>() >> 1,
                    rand::random::<u64>()
                ),
                "-days",
                "3650",
                "-extfile",
                path_str(&ext_file)?,
                "-extensions",
                "leaf",
                "-out",
                path_str(&pair.cert)?,
            ],
            dir,
        )?;
        Ok(pair)
    }
}

/// Writes the ServiceAccount token signing key pair: `sa.key` (private, PKCS#8) and
/// `sa.pub` (public) in `dir`.
pub fn service_account_keys(dir: &Path) -> Result<KeyPair> {
    let key = dir.join("sa.key");
    let public = dir.join("sa.pub");
    new_key(&key, dir)?;
    openssl(
        &[
            "pkey",
            "-in",
            path_str(&key)?,
            "-pubout",
            "-out",
            path_str(&public)?,
        ],
        dir,
    )?;
    Ok(KeyPair { cert: public, key })
}
