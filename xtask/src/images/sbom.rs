//! The software bill of materials beside each image: an SPDX 2.3 JSON document listing the
//! Debian packages of its layers (from the lock), the crates compiled into its binary (from
//! `Cargo.lock`, through `cargo metadata`'s resolved graph: normal dependencies only, no build
//! scripts' or proc macros' own), and the npm packages of the Azurite tree (from its
//! `package-lock.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use super::debs::Locked;
use super::tree::hex;
use crate::shell::{cargo, output};

/// One component of an image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Component {
    /// `deb`, `cargo` or `npm`.
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    /// An SPDX license expression, when the package declares one.
    pub license: Option<String>,
    /// Where it was fetched from.
    pub download: Option<String>,
    /// `(algorithm, hex)`, e.g. `("SHA256", "…")`.
    pub checksum: Option<(&'static str, String)>,
}

impl Component {
    fn purl(&self) -> String {
        match self.kind {
            "deb" => format!(
                "pkg:deb/debian/{}@{}?arch=amd64&distro=debian-12",
                self.name,
                encode(&self.version)
            ),
            "npm" => match self.name.split_once('/') {
                Some((scope, name)) => format!("pkg:npm/{}/{name}@{}", encode(scope), self.version),
                None => format!("pkg:npm/{}@{}", self.name, self.version),
            },
            _ => format!("pkg:cargo/{}@{}", self.name, self.version),
        }
    }
}

/// Percent-encodes what a purl version or namespace may not hold literally.
fn encode(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '~' => c.to_string(),
            other => format!("%{:02X}", other as u32),
        })
        .collect()
}

/// The Debian packages of the lock as components.
pub fn debs(packages: &[&Locked]) -> Vec<Component> {
    packages
        .iter()
        .map(|p| Component {
            kind: "deb",
            name: p.name.clone(),
            version: p.version.clone(),
            license: None,
            download: Some(p.url.clone()),
            checksum: Some(("SHA256", p.sha256.clone())),
        })
        .collect()
}

/// The crates linked into `package`'s binary for x86_64 Linux.
pub fn crates(package: &str) -> Result<Vec<Component>> {
    let json = output(cargo().args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--filter-platform",
        "x86_64-unknown-linux-gnu",
    ]))?;
    crates_of(&serde_json::from_str(&json)?, package)
}

fn crates_of(metadata: &Value, package: &str) -> Result<Vec<Component>> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata has no resolved graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = packages
        .values()
        .find(|p| p["name"] == package && p["source"].is_null())
        .and_then(|p| p["id"].as_str())
        .with_context(|| format!("the workspace has no package {package}"))?;
    let proc_macro = |id: &str| {
        packages[id]["targets"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["kind"][0] == "proc-macro"))
    };
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else {
            bail!("{id} is not in cargo metadata's resolved graph");
        };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
            if let Some(dep_id) = dep["pkg"].as_str()
                && normal
                && !proc_macro(dep_id)
            {
                stack.push(dep_id);
            }
        }
    }
    let lock_sums = lock_checksums()?;
    let mut out: Vec<Component> = seen
        .into_iter()
        .map(|id| {
            let p = packages[id];
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            let version = p["version"].as_str().unwrap_or_default().to_owned();
            let from_registry = p["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("registry+"));
            Component {
                kind: "cargo",
                checksum: lock_sums
                    .get(&(name.clone(), version.clone()))
                    .map(|sum| ("SHA256", sum.clone())),
                download: from_registry
                    .then(|| format!("https://crates.io/api/v1/crates/{name}/{version}/download")),
                license: p["license"]
                    .as_str()
                    .and_then(|l| spdx_license(&l.replace('/', " OR "))),
                name,
                version,
            }
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `(name, version)` → the SHA-256 of the `.crate` that `Cargo.lock` records.
fn lock_checksums() -> Result<BTreeMap<(String, String), String>> {
    let lock = std::fs::read_to_string(crate::shell::root().join("Cargo.lock"))
        .context("cannot read Cargo.lock")?;
    let mut out = BTreeMap::new();
    for block in lock.split("[[package]]") {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{key} = \""))
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_owned)
            })
        };
        if let (Some(name), Some(version), Some(sum)) =
            (field("name"), field("version"), field("checksum"))
        {
            out.insert((name, version), sum);
        }
    }
    Ok(out)
}

/// The packages an npm `package-lock.json` (version 2 or 3) installs.
pub fn npm(package_lock: &Path) -> Result<Vec<Component>> {
    let text = std::fs::read_to_string(package_lock)
        .with_context(|| format!("cannot read {}", package_lock.display()))?;
    let lock: Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for (path, p) in lock["packages"]
        .as_object()
        .context("package-lock.json has no `packages` (lockfileVersion 2 or newer)")?
    {
        let Some(name) = path
            .rsplit("node_modules/")
            .next()
            .filter(|_| !path.is_empty())
        else {
            continue;
        };
        let checksum = p["integrity"]
            .as_str()
            .and_then(|i| i.strip_prefix("sha512-"))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .map(|bytes| ("SHA512", hex(&bytes)));
        out.push(Component {
            kind: "npm",
            name: name.to_owned(),
            version: p["version"].as_str().unwrap_or_default().to_owned(),
            license: p["license"].as_str().and_then(spdx_license),
            download: p["resolved"].as_str().map(str::to_owned),
            checksum,
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `license` when it reads as an SPDX license expression (identifiers joined by `AND`, `OR`,
/// `WITH`, in parentheses or not); a package's free text ("SEE LICENSE IN …", a URL) is left
/// out instead.
fn spdx_license(license: &str) -> Option<String> {
    let spaced = license.replace('(', " ( ").replace(')', " ) ");
    let mut expect_id = true;
    for token in spaced.split_whitespace().filter(|t| *t != "(" && *t != ")") {
        let is_op = matches!(token, "AND" | "OR" | "WITH");
        let is_id = !is_op
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-+:".contains(c));
        if (expect_id && !is_id) || (!expect_id && !is_op) {
            return None;
        }
        expect_id = !expect_id;
    }
    (!expect_id).then(|| license.trim().to_owned())
}

/// An SPDX identifier from free text.
fn spdx_id(kind: &str, name: &str, version: &str) -> String {
    let clean: String = format!("{kind}-{name}-{version}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{clean}")
}

/// The SPDX 2.3 document of image `reference` (manifest `digest`) holding `components`.
pub fn document(reference: &str, digest: &str, created: &str, components: &[Component]) -> Value {
    let (repository, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
    let image_id = "SPDXRef-image".to_owned();
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": repository,
        "versionInfo": tag,
        "primaryPackagePurpose": "CONTAINER",
        "downloadLocation": "NOASSERTION",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "checksums": [{"algorithm": "SHA256", "checksumValue": digest.trim_start_matches("sha256:")}],
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": format!(
                "pkg:oci/{}@{}?repository_url={}",
                repository.rsplit('/').next().unwrap_or(repository),
                encode(digest),
                encode(repository)
            ),
        }],
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    let mut ids = BTreeSet::new();
    for c in components {
        let id = spdx_id(c.kind, &c.name, &c.version);
        if !ids.insert(id.clone()) {
            continue;
        }
        let mut package = json!({
            "SPDXID": id,
            "name": c.name,
            "versionInfo": c.version,
            "downloadLocation": c.download.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": c.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": c.purl(),
            }],
        });
        if c.kind == "deb" {
            package["supplier"] = json!("Organization: Debian");
        }
        if let Some((algorithm, value)) = &c.checksum {
            package["checksums"] = json!([{"algorithm": algorithm, "checksumValue": value}]);
        }
        packages.push(package);
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": reference,
        "documentNamespace": format!(
            "https://github.com/cqrs-operator/cqrs-operator/spdx/{}/{}",
            repository.rsplit('/').next().unwrap_or(repository),
            digest.trim_start_matches("sha256:")
        ),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: cargo-xtask-images-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// Fails with what PyPI spdx-tools (installed for `python`) finds wrong in the document at
/// `path`.
pub fn validate(python: &Path, path: &Path) -> Result<()> {
    let checked = std::process::Command::new(python)
        .args(["-m", "spdx_tools.spdx.clitools.pyspdxtools", "-i"])
        .arg(path)
        .output()
        .context("cannot run spdx-tools")?;
    if !checked.status.success() || !checked.stderr.is_empty() {
        bail!(
            "spdx-tools refused {}: {}",
            path.display(),
            String::from_utf8_lossy(&checked.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_normal_dependencies_outside_proc_macros_are_in_the_binary() {
        let metadata = json!({
            "packages": [
                {"id": "app", "name": "app", "version": "0.1.0", "source": null, "license": "MIT", "targets": [{"kind": ["bin"]}]},
                {"id": "serde", "name": "serde", "version": "1.0.0", "source": "registry+x", "license": "MIT/Apache-2.0", "targets": [{"kind": ["lib"]}]},
                {"id": "derive", "name": "derive", "version": "1.0.0", "source": "registry+x", "targets": [{"kind": ["proc-macro"]}]},
                {"id": "syn", "name": "syn", "version": "2.0.0", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
                {"id": "cc", "name": "cc", "version": "1.0.0", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
                {"id": "proptest", "name": "proptest", "version": "1.0.0", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
            ],
            "resolve": {"nodes": [
                {"id": "app", "deps": [
                    {"pkg": "serde", "dep_kinds": [{"kind": null}]},
                    {"pkg": "derive", "dep_kinds": [{"kind": null}]},
                    {"pkg": "cc", "dep_kinds": [{"kind": "build"}]},
                    {"pkg": "proptest", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "serde", "deps": []},
                {"id": "derive", "deps": [{"pkg": "syn", "dep_kinds": [{"kind": null}]}]},
                {"id": "syn", "deps": []},
                {"id": "cc", "deps": []},
                {"id": "proptest", "deps": []},
            ]},
        });
        let found = crates_of(&metadata, "app").unwrap();
        let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "serde"]);
        assert_eq!(found[1].license.as_deref(), Some("MIT OR Apache-2.0"));
        assert_eq!(found[1].purl(), "pkg:cargo/serde@1.0.0");
    }

    #[test]
    fn only_spdx_expressions_are_declared_as_licenses() {
        assert_eq!(
            spdx_license("MIT OR Apache-2.0").as_deref(),
            Some("MIT OR Apache-2.0")
        );
        assert_eq!(
            spdx_license("(MIT AND Zlib)").as_deref(),
            Some("(MIT AND Zlib)")
        );
        assert_eq!(
            spdx_license("http://geraintluff.github.io/tv4/LICENSE.txt"),
            None
        );
        assert_eq!(spdx_license("SEE LICENSE IN LICENSE.md"), None);
    }

    #[test]
    fn purls_encode_debian_versions_and_npm_scopes() {
        let deb = Component {
            kind: "deb",
            name: "zlib1g".into(),
            version: "1:1.2.13.dfsg-1+deb12u1".into(),
            license: None,
            download: None,
            checksum: None,
        };
        assert_eq!(
            deb.purl(),
            "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1%2Bdeb12u1?arch=amd64&distro=debian-12"
        );
        let npm = Component {
            kind: "npm",
            name: "@azure/core-rest-pipeline".into(),
            version: "1.16.0".into(),
            ..deb
        };
        assert_eq!(npm.purl(), "pkg:npm/%40azure/core-rest-pipeline@1.16.0");
    }
}
