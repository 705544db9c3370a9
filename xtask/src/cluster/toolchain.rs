//! The local control plane's binaries, built from the Go module proxy into a version-keyed
//! cache outside the clone (`~/.cache/cqrs-operator/k8s-<versions>/bin`), only when missing.
//!
//! `k8s.io/kubernetes` cannot be `go install`ed (its go.mod replaces the `k8s.io/*` staging
//! modules with local paths), so a small wrapper module requires it and replaces every staging
//! module with its published release. The list is read from the `.mod` file the proxy serves,
//! never typed by hand. One multi-call binary (`xtask/k8s-tools/main.go`) holds etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl, kwok
//! and kwokctl; Helm's CLI has no replace directives and is `go install`ed as it is; CoreDNS
//! (the real node's cluster DNS) is built from a module of its own (`xtask/coredns/main.go`,
//! only the plugins it uses), since its dependencies are not the Kubernetes release's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::shell::{on_path, output, root, step};

/// Kubernetes release of the control plane (matches k8s-openapi's `v1_33`).
pub const KUBERNETES: &str = "v1.33.13";
/// etcd release (the one Kubernetes 1.33 is tested with).
pub const ETCD: &str = "v3.5.21";
/// kwok release: fake nodes that run the pods the scheduler places.
pub const KWOK: &str = "v0.7.0";
/// Helm CLI release (built against the same Kubernetes 1.33 client libraries).
pub const HELM: &str = "v3.18.6";
/// CoreDNS release (the one Kubernetes 1.33's kubeadm installs).
pub const COREDNS: &str = "v1.12.0";

/// Oldest Go that builds these releases (their go.mod says `go 1.24.0`).
const MIN_GO_MINOR: u32 = 24;

/// The programs of the multi-call binary, each a symlink to it in `bin/`.
pub const TOOLS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "kwok",
    "kwokctl",
];

/// The cache directory for this set of versions (`$CQRS_CACHE_DIR` overrides the base).
pub fn cache_dir() -> Result<PathBuf> {
    let key = format!(
        "k8s-{}-etcd-{}-kwok-{}-helm-{}-coredns-{}",
        KUBERNETES.trim_start_matches('v'),
        ETCD.trim_start_matches('v'),
        KWOK.trim_start_matches('v'),
        HELM.trim_start_matches('v'),
        COREDNS.trim_start_matches('v')
    );
    Ok(cache_base()?.join(key))
}

/// Where version-keyed builds are cached: `$CQRS_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/cqrs-operator`, else `~/.cache/cqrs-operator`.
pub fn cache_base() -> Result<PathBuf> {
    Ok(match std::env::var_os("CQRS_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("XDG_CACHE_HOME") {
            Some(dir) => PathBuf::from(dir).join("cqrs-operator"),
            None => PathBuf::from(std::env::var_os("HOME").context(
                "HOME is not set; set CQRS_CACHE_DIR to where the Kubernetes binaries may be cached",
            )?)
            .join(".cache/cqrs-operator"),
        },
    })
}

/// The `bin/` directory with every tool, building what is missing.
pub fn ensure() -> Result<PathBuf> {
    let dir = cache_dir()?;
    let bin = dir.join("bin");
    let main_go = std::fs::read_to_string(root().join("xtask/k8s-tools/main.go"))
        .context("cannot read xtask/k8s-tools/main.go")?;
    let stamp = bin.join(".k8s-tools.main.go");
    let multi_call_fresh = bin.join("k8s-tools").is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == main_go)
        && TOOLS.iter().all(|t| bin.join(t).exists());
    let helm_fresh = bin.join("helm").is_file();
    let coredns_go = std::fs::read_to_string(root().join("xtask/coredns/main.go"))
        .context("cannot read xtask/coredns/main.go")?;
    let coredns_stamp = bin.join(".coredns.main.go");
    let coredns_fresh = bin.join("coredns").is_file()
        && std::fs::read_to_string(&coredns_stamp).is_ok_and(|s| s == coredns_go);
    if multi_call_fresh && helm_fresh && coredns_fresh {
        return Ok(bin);
    }
    let go = go_toolchain()?;
    println!(
        "\n==> building the local control plane into {} (once per version set)",
        dir.display()
    );
    let started = Instant::now();
    std::fs::create_dir_all(&bin)?;
    if !multi_call_fresh {
        build_multi_call(&go, &dir, &main_go)?;
        std::fs::write(&stamp, &main_go)?;
    }
    if !helm_fresh {
        build_helm(&go, &bin)?;
    }
    if !coredns_fresh {
        build_coredns(&go, &dir, &coredns_go)?;
        std::fs::write(&coredns_stamp, &coredns_go)?;
    }
    println!(
        "    control plane binaries ready in {:.0}s",
        started.elapsed().as_secs_f32()
    );
    Ok(bin)
}

/// `go`, checked to be new enough; a clear message when it is missing.
pub fn go_toolchain() -> Result<PathBuf> {
    if !on_path("go") {
        bail!(
            "the local control plane (and KEDA, for `bench peers`) is built from the Go module \
             proxy, and `go` is not on PATH: \
             install Go 1.{MIN_GO_MINOR} or newer (https://go.dev/doc/install, or your package \
             manager's golang package if it is that new), then run this again"
        );
    }
    let version = output(Command::new("go").args(["env", "GOVERSION"]))?;
    let minor = version
        .trim()
        .strip_prefix("go1.")
        .and_then(|rest| rest.split(['.', 'r', 'b']).next())
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= MIN_GO_MINOR => Ok(PathBuf::from("go")),
        _ => bail!(
            "`go` is {}, and these Kubernetes releases need Go 1.{MIN_GO_MINOR} or newer: \
             install a newer Go (https://go.dev/doc/install)",
            version.trim()
        ),
    }
}

/// A `go` command for the wrapper module: static, no VCS stamping, never a toolchain download.
pub fn go(go: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(go);
    cmd.current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false -trimpath");
    cmd
}

fn build_multi_call(go_bin: &Path, dir: &Path, main_go: &str) -> Result<()> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    let staging = staging_modules(go_bin, &src)?;
    std::fs::write(src.join("go.mod"), wrapper_go_mod(&staging))?;
    std::fs::write(src.join("main.go"), main_go)?;
    step(
        &format!(
            "resolving the wrapper module (kubernetes {KUBERNETES}, etcd {ETCD}, kwok {KWOK}; {} staging modules replaced)",
            staging.len()
        ),
        go(go_bin, &src).args(["mod", "tidy"]),
    )?;
    let ldflags = kubernetes_ldflags();
    step(
        "compiling etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, \
         kube-proxy, kubectl, kwok and kwokctl into one binary (cold, it took 4 to 5 minutes \
         on 2 cores)",
        go(go_bin, &src)
            .args(["build", "-ldflags", &ldflags, "-o"])
            .arg(dir.join("bin/k8s-tools"))
            .arg("."),
    )?;
    for tool in TOOLS {
        let link = dir.join("bin").join(tool);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("k8s-tools", &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(())
}

/// The staging modules `k8s.io/kubernetes` replaces with `./staging/src/...`, read from the
/// `.mod` file the module proxy serves for it.
fn staging_modules(go_bin: &Path, src: &Path) -> Result<Vec<String>> {
    let module = download(go_bin, src, &format!("k8s.io/kubernetes@{KUBERNETES}"))?;
    let modules = parse_staging_replaces(&module.go_mod);
    if modules.is_empty() {
        bail!(
            "the go.mod of k8s.io/kubernetes@{KUBERNETES} replaces no ./staging modules; has the \
             Kubernetes layout changed?"
        );
    }
    Ok(modules)
}

/// A module as the Go module proxy serves it.
pub struct Downloaded {
    /// Its `go.mod` (the `.mod` file the proxy serves).
    pub go_mod: String,
    /// Where its source was extracted (read-only, in the module cache).
    pub dir: PathBuf,
}

/// `go mod download -json <module@version>`, run in `dir`.
pub fn download(go_bin: &Path, dir: &Path, module: &str) -> Result<Downloaded> {
    let json = output(go(go_bin, dir).args(["mod", "download", "-json", module]))
        .with_context(|| format!("cannot download {module} from the Go module proxy"))?;
    let info: serde_json::Value =
        serde_json::from_str(&json).context("`go mod download -json` printed no JSON")?;
    let field = |name: &str| {
        info[name]
            .as_str()
            .map(PathBuf::from)
            .with_context(|| format!("`go mod download -json {module}` named no {name}"))
    };
    let go_mod_path = field("GoMod")?;
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .with_context(|| format!("cannot read {}", go_mod_path.display()))?;
    Ok(Downloaded {
        go_mod,
        dir: field("Dir")?,
    })
}

/// Module paths of `X => ./staging/src/X` lines.
fn parse_staging_replaces(go_mod: &str) -> Vec<String> {
    replace_directives(go_mod)
        .into_iter()
        .filter(|(_, target)| target.starts_with("./staging/"))
        .map(|(module, _)| module)
        .collect()
}

/// The replace directives of a go.mod (single-line and block form, comments dropped), as
/// `(module, target)`: `("k8s.io/api", "k8s.io/api v0.33.5")`, `("k8s.io/api", "./staging/...")`.
pub fn replace_directives(go_mod: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in go_mod.lines() {
        let line = line.split("//").next().unwrap_or_default().trim();
        if line == "replace (" {
            in_block = true;
            continue;
        }
        if in_block && line == ")" {
            in_block = false;
            continue;
        }
        let body = match line.strip_prefix("replace ") {
            Some(rest) => rest.trim(),
            None if in_block => line,
            None => continue,
        };
        if let Some((module, target)) = body.split_once("=>") {
            out.push((module.trim().to_owned(), target.trim().to_owned()));
        }
    }
    out
}

/// `v1.33.13` → `v0.33.13`, the tag the staging modules are published under.
fn staging_version() -> String {
    format!("v0.{}", KUBERNETES.trim_start_matches("v1."))
}

fn wrapper_go_mod(staging: &[String]) -> String {
    let mut s = String::from(
        "// Written by `cargo xtask cluster` (xtask/src/cluster/toolchain.rs); do not edit.\n\
         module cqrs.dev/k8s-tools\n\ngo 1.24.0\n\nrequire (\n",
    );
    s.push_str(&format!("\tk8s.io/kubernetes {KUBERNETES}\n"));
    s.push_str(&format!("\tgo.etcd.io/etcd/server/v3 {ETCD}\n"));
    s.push_str(&format!("\tsigs.k8s.io/kwok {KWOK}\n)\n\nreplace (\n"));
    let version = staging_version();
    for module in staging {
        s.push_str(&format!("\t{module} => {module} {version}\n"));
    }
    s.push_str(")\n");
    s
}

/// Version stamps, so `--version` and `/version` tell the truth.
fn kubernetes_ldflags() -> String {
    let minor = KUBERNETES.split('.').nth(1).unwrap_or_default();
    [
        "-s -w".to_owned(),
        format!("-X k8s.io/component-base/version.gitVersion={KUBERNETES}"),
        "-X k8s.io/component-base/version.gitMajor=1".to_owned(),
        format!("-X k8s.io/component-base/version.gitMinor={minor}"),
        "-X k8s.io/component-base/version.gitTreeState=clean".to_owned(),
        format!("-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES}"),
        "-X k8s.io/client-go/pkg/version.gitMajor=1".to_owned(),
        format!("-X k8s.io/client-go/pkg/version.gitMinor={minor}"),
    ]
    .join(" ")
}

/// CoreDNS from a wrapper module of its own: `xtask/coredns/main.go` and CoreDNS's release.
fn build_coredns(go_bin: &Path, dir: &Path, main_go: &str) -> Result<()> {
    let src = dir.join("src-coredns");
    std::fs::create_dir_all(&src)?;
    std::fs::write(
        src.join("go.mod"),
        format!(
            "// Written by `cargo xtask cluster` (xtask/src/cluster/toolchain.rs); do not edit.\n\
             module cqrs.dev/coredns\n\ngo 1.22.7\n\nrequire github.com/coredns/coredns {COREDNS}\n"
        ),
    )?;
    std::fs::write(src.join("main.go"), main_go)?;
    step(
        &format!("resolving CoreDNS {COREDNS}"),
        go(go_bin, &src).args(["mod", "tidy"]),
    )?;
    let ldflags = format!("-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS}");
    step(
        &format!("compiling CoreDNS {COREDNS} (the kubernetes plugin and a few others)"),
        go(go_bin, &src)
            .args(["build", "-ldflags", &ldflags, "-o"])
            .arg(dir.join("bin/coredns"))
            .arg("."),
    )
}

fn build_helm(go_bin: &Path, bin: &Path) -> Result<()> {
    let minor = KUBERNETES.split('.').nth(1).unwrap_or_default();
    let ldflags = [
        "-s -w".to_owned(),
        format!("-X helm.sh/helm/v3/internal/version.version={HELM}"),
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean".to_owned(),
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1".to_owned(),
        format!("-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={minor}"),
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1".to_owned(),
        format!("-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}"),
    ]
    .join(" ");
    step(
        &format!("compiling the Helm {HELM} CLI (go install)"),
        go(go_bin, bin)
            .env("GOBIN", bin)
            .args(["install", "-ldflags", &ldflags])
            .arg(format!("helm.sh/helm/v3/cmd/helm@{HELM}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_replaces_are_read_from_the_go_mod() {
        let go_mod = "module k8s.io/kubernetes\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\
                      \tgithub.com/x/y => github.com/x/y v1.0.0\n\tk8s.io/kubectl => ./staging/src/k8s.io/kubectl\n)\n\
                      replace k8s.io/kms => ./staging/src/k8s.io/kms\n";
        assert_eq!(
            parse_staging_replaces(go_mod),
            ["k8s.io/api", "k8s.io/kubectl", "k8s.io/kms"]
        );
    }

    #[test]
    fn staging_modules_are_pinned_to_the_matching_release() {
        assert_eq!(staging_version(), "v0.33.13");
        let go_mod = wrapper_go_mod(&["k8s.io/api".to_owned()]);
        assert!(
            go_mod.contains("\tk8s.io/api => k8s.io/api v0.33.13\n"),
            "{go_mod}"
        );
        assert!(
            go_mod.contains("\tk8s.io/kubernetes v1.33.13\n"),
            "{go_mod}"
        );
    }
}
