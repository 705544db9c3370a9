//! The Debian packages the images are assembled from, the way distroless is made: each package
//! locked by name, version and SHA-256 in `images/debian.lock.json`, fetched once into the
//! version-keyed cache, checked against the lock, and unpacked (no maintainer script runs, so
//! what those would make, such as the CA bundle, is written by the build itself).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::tree::{Content, Meta, Tree, hex};
use crate::shell::{on_path, output, root};

/// The lock file, committed.
pub fn lock_path() -> PathBuf {
    root().join("images/debian.lock.json")
}

/// One locked package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Where the mirror served it when it was locked.
    pub url: String,
    pub size: u64,
    /// Hex SHA-256 of the `.deb`.
    pub sha256: String,
}

/// Dependencies deliberately left out, as `(package, dependency, why)`: only maintainer
/// scripts use them, and the build does those scripts' work itself.
pub const OMITTED: &[(&str, &str, &str)] = &[
    (
        "ca-certificates",
        "openssl",
        "its maintainer scripts build /etc/ssl/certs/ca-certificates.crt, which the image build writes",
    ),
    ("ca-certificates", "debconf", "maintainer scripts only"),
    ("tzdata", "debconf", "maintainer scripts only"),
    ("base-files", "awk", "maintainer scripts only"),
];

/// The lock, read from `images/debian.lock.json`.
pub fn read_lock() -> Result<BTreeMap<String, Locked>> {
    let path = lock_path();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse_lock(&text).with_context(|| format!("{} is not a valid lock", path.display()))
}

fn parse_lock(text: &str) -> Result<BTreeMap<String, Locked>> {
    let lock: Value = serde_json::from_str(text)?;
    let packages = lock["packages"]
        .as_array()
        .context("`packages` is not a list")?;
    let mut out = BTreeMap::new();
    for (i, p) in packages.iter().enumerate() {
        let field = |name: &str| -> Result<String> {
            p[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("packages[{i}].{name} is missing or not a string"))
        };
        let locked = Locked {
            name: field("name")?,
            version: field("version")?,
            architecture: field("architecture")?,
            url: field("url")?,
            size: p["size"]
                .as_u64()
                .with_context(|| format!("packages[{i}].size is missing or not a number"))?,
            sha256: field("sha256")?,
        };
        if locked.sha256.len() != 64 || !locked.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("packages[{i}].sha256 is not 64 hex digits");
        }
        out.insert(locked.name.clone(), locked);
    }
    Ok(out)
}

fn render_lock(packages: &BTreeMap<String, Locked>) -> String {
    let list: Vec<Value> = packages
        .values()
        .map(|p| {
            serde_json::json!({
                "name": p.name, "version": p.version, "architecture": p.architecture,
                "url": p.url, "size": p.size, "sha256": p.sha256,
            })
        })
        .collect();
    let lock = serde_json::json!({
        "comment": "Debian 12 (bookworm) packages of the container images, locked. Written by \
                    `cargo xtask images --update-lock`; review the diff before committing.",
        "packages": list,
    });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&lock).expect("JSON values serialize")
    )
}

/// The cached `.deb` of `p`, when it is there with the locked checksum.
pub fn cached(p: &Locked, cache: &Path) -> Option<PathBuf> {
    let file = cache.join(format!("{}_{}_{}.deb", p.name, p.version, p.architecture));
    (file.is_file() && file_sha256(&file).ok()? == p.sha256).then_some(file)
}

/// The cached `.deb` of `p`, fetched from its locked URL when missing; its SHA-256 is checked
/// against the lock either way.
pub fn fetch(p: &Locked, cache: &Path) -> Result<PathBuf> {
    if let Some(file) = cached(p, cache) {
        return Ok(file);
    }
    std::fs::create_dir_all(cache)?;
    let file = cache.join(format!("{}_{}_{}.deb", p.name, p.version, p.architecture));
    if !on_path("curl") {
        bail!("fetching Debian packages needs curl, which is not on PATH (apt-get install curl)");
    }
    let partial = file.with_extension("deb.partial");
    let status = Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--retry",
            "3",
            "-o",
        ])
        .arg(&partial)
        .arg(&p.url)
        .stdin(Stdio::null())
        .status()
        .context("cannot run curl")?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "the mirror no longer serves {} {} (locked in images/debian.lock.json; {} answered \
             with an error). Run `cargo xtask images --update-lock` to lock the versions the \
             mirror serves now, check the diff and commit it",
            p.name,
            p.version,
            p.url
        );
    }
    let got = file_sha256(&partial)?;
    if got != p.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{} {} from {} has SHA-256 {got}, but the lock says {}: the mirror serves other \
             bytes under that version. Nothing was unpacked; if the new package is expected, run \
             `cargo xtask images --update-lock` and review the diff",
            p.name,
            p.version,
            p.url,
            p.sha256
        );
    }
    std::fs::rename(&partial, &file)?;
    Ok(file)
}

/// Hex SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A package's control fields (`dpkg-deb -f`).
pub fn control(deb: &Path) -> Result<String> {
    output(Command::new(dpkg_deb()?).arg("-f").arg(deb))
}

fn dpkg_deb() -> Result<&'static str> {
    if !on_path("dpkg-deb") {
        bail!(
            "unpacking Debian packages needs dpkg-deb, which is not on PATH: install dpkg \
             (apt-get install dpkg, dnf install dpkg, brew install dpkg)"
        );
    }
    Ok("dpkg-deb")
}

/// Whether a package's file belongs in a minimal image: no documentation but the copyright
/// notices, no manual pages, no lintian overrides, no iconv converters (nothing here uses them).
pub fn wanted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    let p = p.trim_start_matches("./").trim_end_matches('/');
    if let Some(doc) = p.strip_prefix("usr/share/doc/") {
        // The package's doc dir itself (or its symlink) and its copyright stay.
        return match doc.split_once('/') {
            None => true,
            Some((_, rest)) => rest == "copyright",
        };
    }
    let dropped = [
        "usr/share/man",
        "usr/share/info",
        "usr/share/lintian",
        "usr/share/locale",
        "usr/lib/x86_64-linux-gnu/gconv",
    ];
    !dropped
        .iter()
        .any(|d| p == *d || p.starts_with(&format!("{d}/")))
}

/// Unpacks the data of `deb` into `tree` (files it has already are replaced), keeping what
/// [`wanted`] keeps, and records it in `/var/lib/dpkg/status.d/` as distroless does, so image
/// scanners see the package.
pub fn unpack(deb: &Path, name: &str, tree: &mut Tree) -> Result<()> {
    let mut child = Command::new(dpkg_deb()?)
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("cannot run dpkg-deb")?;
    let stdout = child.stdout.take().context("dpkg-deb's stdout")?;
    let mut archive = tar::Archive::new(stdout);
    let mut seen: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let header = entry.header();
        let meta = Meta {
            mode: header.mode()? & 0o7777,
            uid: header.uid()?,
            gid: header.gid()?,
        };
        let kind = header.entry_type();
        let inside = path.to_string_lossy().into_owned();
        if !wanted(&path) || inside == "./" || inside.is_empty() {
            continue;
        }
        match kind {
            tar::EntryType::Directory => {
                // A directory another package made keeps its first owner and mode.
                if tree.get(&inside).is_none() {
                    tree.dir(&inside, meta);
                }
            }
            tar::EntryType::Regular => {
                let mut bytes = Vec::with_capacity(header.size()? as usize);
                entry.read_to_end(&mut bytes)?;
                seen.insert(path.clone(), bytes.clone());
                tree.file(&inside, meta, Content::Bytes(bytes));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("{inside} in {} links nowhere", deb.display()))?;
                tree.symlink(&inside, &target.to_string_lossy());
            }
            tar::EntryType::Link => {
                // A hard link becomes a copy: the tree is written in path order, which may put
                // the link before its target.
                let target = entry
                    .link_name()?
                    .with_context(|| format!("{inside} in {} links nowhere", deb.display()))?
                    .into_owned();
                let bytes = seen.get(&target).cloned().with_context(|| {
                    format!(
                        "{inside} in {} links to {} before it",
                        deb.display(),
                        target.display()
                    )
                })?;
                tree.file(&inside, meta, Content::Bytes(bytes));
            }
            other => bail!(
                "{inside} in {} is a {other:?}, which images do not hold",
                deb.display()
            ),
        }
    }
    drop(archive);
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "dpkg-deb --fsys-tarfile {} failed ({status})",
            deb.display()
        );
    }
    let md5sums =
        output(Command::new(dpkg_deb()?).arg("-I").arg(deb).arg("md5sums")).unwrap_or_default();
    tree.file(
        &format!("/var/lib/dpkg/status.d/{name}"),
        Meta::root(0o644),
        Content::Bytes(control(deb)?.into_bytes()),
    );
    if !md5sums.is_empty() {
        tree.file(
            &format!("/var/lib/dpkg/status.d/{name}.md5sums"),
            Meta::root(0o644),
            Content::Bytes(md5sums.into_bytes()),
        );
    }
    Ok(())
}

/// The names a control text's `Depends` and `Pre-Depends` ask for: one list of alternatives per
/// clause (`a (>= 1) | b` → `["a", "b"]`), architecture qualifiers dropped.
pub fn dependencies(control: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in control.lines() {
        let Some(list) = line
            .strip_prefix("Depends:")
            .or_else(|| line.strip_prefix("Pre-Depends:"))
        else {
            continue;
        };
        for clause in list.split(',') {
            let alternatives: Vec<String> = clause
                .split('|')
                .filter_map(|alt| {
                    let name = alt.split_whitespace().next()?;
                    Some(name.split(':').next().unwrap_or(name).to_owned())
                })
                .collect();
            if !alternatives.is_empty() {
                out.push(alternatives);
            }
        }
    }
    out
}

/// The packages a control text `Provides`.
fn provides(control: &str) -> Vec<String> {
    control
        .lines()
        .filter_map(|l| l.strip_prefix("Provides:"))
        .flat_map(|list| list.split(','))
        .filter_map(|p| p.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Fails naming every dependency of `controls` (package → control text) that no package in the
/// set satisfies and [`OMITTED`] does not excuse.
pub fn check_closure(image: &str, controls: &BTreeMap<String, String>) -> Result<()> {
    let mut present: BTreeSet<String> = controls.keys().cloned().collect();
    for control in controls.values() {
        present.extend(provides(control));
    }
    let mut missing = Vec::new();
    for (package, control) in controls {
        for alternatives in dependencies(control) {
            let satisfied = alternatives.iter().any(|a| present.contains(a));
            let excused = alternatives.iter().any(|a| {
                OMITTED
                    .iter()
                    .any(|(p, d, _)| p == package && (d == a || a.starts_with(&format!("{d}-"))))
            });
            if !satisfied && !excused {
                missing.push(format!("{package} needs {}", alternatives.join(" | ")));
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "the packages of image {image} do not hold their dependencies: {}. Add them to the \
             image's package list in xtask/src/images/rootfs.rs (and `cargo xtask images \
             --update-lock`), or to debs::OMITTED with the reason",
            missing.join("; ")
        );
    }
    Ok(())
}

/// `cargo xtask images --update-lock`: locks `names` at the newest version the configured
/// Debian archives serve (never a version from elsewhere, such as an installed package), with
/// its URL, size and SHA-256 as apt knows them.
pub fn update_lock(names: &BTreeSet<&str>) -> Result<()> {
    for tool in ["apt-cache", "apt-get"] {
        if !on_path(tool) {
            bail!(
                "--update-lock asks apt which versions the Debian mirror serves, and {tool} is not on PATH: run it on a Debian 12 host"
            );
        }
    }
    let old = read_lock().unwrap_or_default();
    let mut locked = BTreeMap::new();
    for name in names {
        let madison = output(Command::new("apt-cache").args(["madison", name]))?;
        let version = newest_debian_version(&madison).with_context(|| {
            format!("no Debian archive serves {name} (`apt-cache madison {name}` lists none; run apt-get update?)")
        })?;
        let uris = output(
            Command::new("apt-get")
                .args(["download", "--print-uris"])
                .arg(format!("{name}={version}")),
        )?;
        let p = parse_print_uris(name, &version, &uris).with_context(|| {
            format!("apt-get download --print-uris {name}={version} printed {uris:?}")
        })?;
        match old.get(*name) {
            Some(o) if o.version == p.version => {}
            Some(o) => println!("    {name}: {} -> {}", o.version, p.version),
            None => println!("    {name}: new, {}", p.version),
        }
        locked.insert(name.to_string(), p);
    }
    std::fs::write(lock_path(), render_lock(&locked))?;
    println!("    wrote {}", lock_path().display());
    Ok(())
}

/// The first version `apt-cache madison` lists from a Debian archive (it lists newest first).
fn newest_debian_version(madison: &str) -> Option<String> {
    madison.lines().find_map(|line| {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let (version, source) = (fields.get(1)?, fields.get(2)?);
        source
            .contains("debian.org/debian")
            .then(|| (*version).to_owned())
    })
}

/// `'URL' file size SHA256:hex` → the locked package.
fn parse_print_uris(name: &str, version: &str, line: &str) -> Option<Locked> {
    let mut fields = line.split_whitespace();
    let url = fields.next()?.trim_matches('\'').to_owned();
    let file = fields.next()?;
    let size = fields.next()?.parse().ok()?;
    let sha256 = fields.next()?.strip_prefix("SHA256:")?.to_owned();
    let architecture = file.rsplit('_').next()?.strip_suffix(".deb")?.to_owned();
    Some(Locked {
        name: name.to_owned(),
        version: version.to_owned(),
        architecture,
        url,
        size,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_keep_alternatives_and_drop_versions_and_qualifiers() {
        let control = "Package: ca-certificates\nPre-Depends: libc6 (>= 2.34)\n\
                       Depends: openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0, python3:any\n";
        assert_eq!(
            dependencies(control),
            [
                vec!["libc6".to_owned()],
                vec!["openssl".to_owned()],
                vec!["debconf".to_owned(), "debconf-2.0".to_owned()],
                vec!["python3".to_owned()],
            ]
        );
    }

    #[test]
    fn a_missing_dependency_is_named_unless_it_is_excused() {
        let mut controls = BTreeMap::new();
        controls.insert(
            "ca-certificates".to_owned(),
            "Depends: openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0\n".to_owned(),
        );
        controls.insert(
            "libgcc-s1".to_owned(),
            "Depends: gcc-12-base, libc6\n".to_owned(),
        );
        controls.insert("libc6".to_owned(), "Depends: libgcc-s1\n".to_owned());
        let err = check_closure("base", &controls).unwrap_err().to_string();
        assert!(err.contains("libgcc-s1 needs gcc-12-base"), "{err}");
        assert!(!err.contains("openssl"), "{err}");
        controls.insert("gcc-12-base".to_owned(), String::new());
        check_closure("base", &controls).unwrap();
    }

    #[test]
    fn the_lock_round_trips_and_refuses_a_bad_checksum() {
        let mut packages = BTreeMap::new();
        packages.insert(
            "netbase".to_owned(),
            Locked {
                name: "netbase".into(),
                version: "6.4".into(),
                architecture: "all".into(),
                url: "http://deb.debian.org/debian/pool/main/n/netbase/netbase_6.4_all.deb".into(),
                size: 12_000,
                sha256: "a".repeat(64),
            },
        );
        let text = render_lock(&packages);
        assert_eq!(parse_lock(&text).unwrap(), packages);
        let bad = text.replace(&"a".repeat(64), "xyz");
        let err = parse_lock(&bad).unwrap_err().to_string();
        assert!(err.contains("packages[0].sha256"), "{err}");
    }

    #[test]
    fn apt_answers_are_read() {
        let madison = "    nodejs | 18.20.4+dfsg-1~deb12u3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n\
                       \x20   nodejs | 18.20.4+dfsg-1~deb12u2 | http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert_eq!(
            newest_debian_version(madison).as_deref(),
            Some("18.20.4+dfsg-1~deb12u3")
        );
        let uris = "'http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9%2bdeb12u14_amd64.deb' \
                    libc6_2.36-9+deb12u14_amd64.deb 2759320 SHA256:ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf\n";
        let p = parse_print_uris("libc6", "2.36-9+deb12u14", uris).unwrap();
        assert_eq!((p.architecture.as_str(), p.size), ("amd64", 2_759_320));
        assert!(p.url.ends_with("libc6_2.36-9%2bdeb12u14_amd64.deb"));
    }

    #[test]
    fn documentation_is_dropped_but_copyright_notices_stay() {
        for (path, keep) in [
            ("./usr/share/doc/libc6/copyright", true),
            ("./usr/share/doc/libc6/", true),
            ("./usr/share/doc/libc6/changelog.Debian.gz", false),
            (
                "./usr/share/doc/ca-certificates/examples/debian/copyright",
                false,
            ),
            ("./usr/share/man/man1/node.1.gz", false),
            ("./usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", false),
            ("./usr/lib/x86_64-linux-gnu/libc.so.6", true),
            ("./usr/share/zoneinfo/Europe/Paris", true),
        ] {
            assert_eq!(wanted(Path::new(path)), keep, "{path}");
        }
    }
}
