//! Client certificates of the node's daemons, signed by the cluster's CA (kwokctl made it, and
//! its key, in `pki/`) with the openssl CLI: the kubelet as `system:node:<name>` in
//! `system:nodes` (so the Node authorizer and NodeRestriction apply to it, as on a real
//! cluster), kube-proxy as `system:kube-proxy` (bound to `system:node-proxier` by default).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{on_path, output};

/// A key and certificate pair on disk.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Issues a client certificate for `common_name` in `organization` into `dir/<file>.{crt,key}`,
/// signed by `pki/ca.{crt,key}`.
pub fn client(
    pki: &Path,
    dir: &Path,
    file: &str,
    common_name: &str,
    organization: Option<&str>,
) -> Result<Pair> {
    if !on_path("openssl") {
        bail!(
            "the node's client certificates are made with openssl, which is not on PATH: apt-get install openssl"
        );
    }
    std::fs::create_dir_all(dir)?;
    let pair = Pair {
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    };
    let csr = dir.join(format!("{file}.csr"));
    let subject = match organization {
        Some(o) => format!("/O={o}/CN={common_name}"),
        None => format!("/CN={common_name}"),
    };
    output(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-subj",
                &subject,
                "-keyout",
            ])
            .arg(&pair.key)
            .arg("-out")
            .arg(&csr),
    )
    .with_context(|| format!("cannot make a key for {common_name}"))?;
    let extensions = dir.join(format!("{file}.ext"));
    std::fs::write(
        &extensions,
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
    )?;
    output(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "365", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(pki.join("ca.crt"))
            .arg("-CAkey")
            .arg(pki.join("ca.key"))
            .arg("-CAcreateserial")
            .arg("-CAserial")
            .arg(dir.join("ca.srl"))
            .arg("-extfile")
            .arg(&extensions)
            .arg("-out")
            .arg(&pair.cert),
    )
    .with_context(|| {
        format!(
            "cannot sign the certificate of {common_name} with {}",
            pki.join("ca.key").display()
        )
    })?;
    let _ = std::fs::remove_file(csr);
    let _ = std::fs::remove_file(extensions);
    Ok(pair)
}

/// A kubeconfig for `server` with the cluster's CA and the client pair.
pub fn kubeconfig(server: &str, ca: &Path, pair: &Pair) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: local\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n- name: local\n  context:\n    cluster: local\n    user: local\ncurrent-context: local\n",
        ca = ca.display(),
        cert = pair.cert.display(),
        key = pair.key.display(),
    )
}
