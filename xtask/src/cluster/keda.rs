//! KEDA's operator and metrics adapter, built from the Go module proxy into the version-keyed
//! cache (`~/.cache/cqrs-operator/keda-<version>/`) for `cargo xtask bench peers`.
//!
//! `github.com/kedacore/keda/v2` pins its Kubernetes libraries with replace directives, which
//! only apply in the main module; so a wrapper module requires it, copies every replace from
//! the `.mod` file the proxy serves (never typed by hand), and names both commands as `tool`s
//! so `go mod tidy` keeps what they import. Its CRDs are copied from the module's
//! `config/crd/bases`, its APIService from `config/metrics-server`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::toolchain::{cache_base, download, go, go_toolchain, replace_directives};
use crate::shell::step;

/// The KEDA release measured beside cqrs-operator.
pub const KEDA: &str = "v2.18.3";
const MODULE: &str = "github.com/kedacore/keda/v2";

/// Versions KEDA's go.mod requires that the Go module proxy reachable here refuses
/// (`403 ... not available`), each replaced by the nearest later release it serves. Both are
/// clients of scalers the benchmark never configures (New Relic, SolarWinds): compiled in,
/// never run.
const REFUSED: &[(&str, &str)] = &[
    ("github.com/newrelic/newrelic-client-go/v2", "v2.76.0"),
    ("github.com/solarwinds/swo-sdk-go/swov1", "v0.13.1"),
];

/// The built KEDA.
#[derive(Debug, Clone)]
pub struct Keda {
    /// `keda-operator`: the ScaledObject controller (0↔1 activation, the HPA it owns, the
    /// gRPC metrics service).
    pub operator: PathBuf,
    /// `keda-adapter`: the `external.metrics.k8s.io` server the HPA controller asks.
    pub adapter: PathBuf,
    /// The CRD manifests of this release.
    pub crds: PathBuf,
    /// Its APIService for `external.metrics.k8s.io` (pointing at `keda/keda-metrics-apiserver`).
    pub api_service: PathBuf,
}

/// The cache directory of this KEDA release.
pub fn cache_dir() -> Result<PathBuf> {
    Ok(cache_base()?.join(format!("keda-{}", KEDA.trim_start_matches('v'))))
}

/// KEDA's two binaries and CRDs, building what is missing (minutes on 2 cores when cold).
pub fn ensure() -> Result<Keda> {
    let dir = cache_dir()?;
    let keda = Keda {
        operator: dir.join("bin/keda-operator"),
        adapter: dir.join("bin/keda-adapter"),
        crds: dir.join("crds"),
        api_service: dir.join("api_service.yaml"),
    };
    let src = dir.join("src");
    let stamp = dir.join("bin/.inputs");
    // NB: what the build depends on, from constants alone: when the binaries are there and
    // the stamp matches, nothing (not go, not the proxy) is run. (`go mod tidy` rewrites the
    // wrapper go.mod, so the go.mod itself cannot be the stamp.)
    let inputs = format!(
        "{MODULE}@{KEDA}; refused versions replaced: {REFUSED:?}; {}",
        ldflags()
    );
    let fresh = keda.operator.is_file()
        && keda.adapter.is_file()
        && keda.crds.is_dir()
        && keda.api_service.is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs);
    if fresh {
        return Ok(keda);
    }
    let go_bin = go_toolchain()?;
    println!(
        "\n==> building KEDA {KEDA} (operator and metrics adapter) into {}",
        dir.display()
    );
    let started = Instant::now();
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(dir.join("bin"))?;
    let module = download(&go_bin, &src, &format!("{MODULE}@{KEDA}"))?;
    let go_mod = wrapper_go_mod(&module.go_mod)?;
    std::fs::write(src.join("go.mod"), &go_mod)?;
    copy_crds(&module.dir.join("config/crd/bases"), &keda.crds)?;
    let api_service = module.dir.join("config/metrics-server/api_service.yaml");
    std::fs::write(
        &keda.api_service,
        std::fs::read(&api_service)
            .with_context(|| format!("cannot read {}", api_service.display()))?,
    )?;
    step(
        &format!(
            "resolving the wrapper module (KEDA {KEDA} with its replace directives; {} refused \
             versions substituted)",
            REFUSED.len()
        ),
        go(&go_bin, &src).args(["mod", "tidy"]),
    )?;
    for (binary, package) in [(&keda.operator, "operator"), (&keda.adapter, "adapter")] {
        step(
            &format!("compiling KEDA's {package} (every scaler is compiled in)"),
            go(&go_bin, &src)
                .args(["build", "-ldflags", &ldflags(), "-o"])
                .arg(binary)
                .arg(format!("{MODULE}/cmd/{package}")),
        )?;
    }
    std::fs::write(&stamp, &inputs)?;
    println!("    KEDA ready in {:.0}s", started.elapsed().as_secs_f32());
    Ok(keda)
}

fn ldflags() -> String {
    format!("-s -w -X {MODULE}/version.Version={KEDA} -X {MODULE}/version.GitCommit=module-proxy")
}

fn copy_crds(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let mut copied = 0;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().context("a file name")?;
            // NB: files in the module cache are read-only; copy the bytes, not the mode.
            std::fs::write(to.join(name), std::fs::read(&path)?)?;
            copied += 1;
        }
    }
    if copied == 0 {
        bail!(
            "{} holds no CRD manifests; has KEDA's layout changed?",
            from.display()
        );
    }
    Ok(())
}

/// `X => Y vN` replace lines of a go.mod, as `(X, "Y vN")`; a local-path replace is an error
/// (a wrapper module cannot copy it).
fn version_replaces(go_mod: &str) -> Result<Vec<(String, String)>> {
    let replaces = replace_directives(go_mod);
    if let Some((from, target)) = replaces
        .iter()
        .find(|(_, t)| t.starts_with('.') || t.starts_with('/'))
    {
        bail!(
            "{MODULE}@{KEDA} replaces {from} with a local path ({target}), which a wrapper module \
             cannot copy"
        );
    }
    Ok(replaces)
}

fn wrapper_go_mod(keda_go_mod: &str) -> Result<String> {
    let replaces = version_replaces(keda_go_mod)?;
    if replaces.is_empty() {
        bail!("the go.mod of {MODULE}@{KEDA} has no replace directives; has its layout changed?");
    }
    let go_line = keda_go_mod
        .lines()
        .find(|l| l.starts_with("go "))
        .context("KEDA's go.mod names no Go version")?;
    let mut s = format!(
        "// Written by `cargo xtask bench peers` (xtask/src/cluster/keda.rs); do not edit.\n\
         module cqrs.dev/keda-tools\n\n{go_line}\n\nrequire {MODULE} {KEDA}\n\n\
         tool (\n\t{MODULE}/cmd/operator\n\t{MODULE}/cmd/adapter\n)\n\nreplace (\n"
    );
    for (from, target) in &replaces {
        s.push_str(&format!("\t{from} => {target}\n"));
    }
    for (module, version) in REFUSED {
        s.push_str(&format!("\t{module} => {module} {version}\n"));
    }
    s.push_str(")\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_are_copied_from_the_go_mod_with_the_refused_versions_substituted() {
        let go_mod = "module github.com/kedacore/keda/v2\n\ngo 1.25.5\n\nreplace (\n\
                      \t// a comment\n\tk8s.io/api => k8s.io/api v0.33.5\n\n\
                      \tgithub.com/x/y => github.com/x/z v1.2.0 // why\n)\n\
                      replace k8s.io/metrics => k8s.io/metrics v0.33.5\n\nrequire (\n\tk8s.io/api v0.33.5\n)\n";
        let wrapper = wrapper_go_mod(go_mod).unwrap();
        for line in [
            "go 1.25.5\n",
            "require github.com/kedacore/keda/v2 v2.18.3\n",
            "\tk8s.io/api => k8s.io/api v0.33.5\n",
            "\tgithub.com/x/y => github.com/x/z v1.2.0\n",
            "\tk8s.io/metrics => k8s.io/metrics v0.33.5\n",
            "\tgithub.com/newrelic/newrelic-client-go/v2 => github.com/newrelic/newrelic-client-go/v2 v2.76.0\n",
            "\tgithub.com/kedacore/keda/v2/cmd/adapter\n",
        ] {
            assert!(wrapper.contains(line), "{line:?} missing from\n{wrapper}");
        }
        assert!(
            !wrapper.contains("k8s.io/api v0.33.5\n)\n\nrequire"),
            "{wrapper}"
        );
    }

    #[test]
    fn a_local_path_replace_is_refused_by_name() {
        let err = version_replaces("replace example.com/a => ../a\n").unwrap_err();
        assert!(err.to_string().contains("example.com/a"), "{err}");
    }
}
