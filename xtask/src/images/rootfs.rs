//! What each layer holds: the distroless-style base (glibc, libgcc, CA certificates, time zones,
//! `nonroot`), Node.js for the Azurite image, the npm tree of Azurite, a static pause process,
//! and a binary of ours.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::debs::{self, Locked};
use super::tree::{Content, Meta, Node, Tree};

/// The user every image runs as (distroless's `nonroot`).
pub const NONROOT: u64 = 65532;

/// Packages of the base every image of ours starts from: what a dynamically linked Rust binary
/// using rustls needs (glibc and libgcc), CA certificates, time zones and `/etc/services`.
pub const BASE: &[&str] = &[
    "base-files",
    "netbase",
    "tzdata",
    "ca-certificates",
    "libc6",
    "libgcc-s1",
    "gcc-12-base",
];

/// Debian's Node.js 18 and what it links, for the Azurite image (on top of [`BASE`]).
pub const NODE: &[&str] = &[
    "nodejs",
    "libnode108",
    "libbrotli1",
    "libc-ares2",
    "libicu72",
    "libnghttp2-14",
    "libssl3",
    "libstdc++6",
    "libuv1",
    "zlib1g",
    "node-acorn",
    "node-busboy",
    "node-cjs-module-lexer",
    "node-undici",
    "node-xtend",
];

/// The pause process of the local node's pod sandboxes.
pub const PAUSE: &[&str] = &["catatonit"];

/// distroless `cc-debian12`'s package set, assembled only to compare sizes with.
pub const DISTROLESS_CC: &[&str] = &[
    "base-files",
    "netbase",
    "tzdata",
    "media-types",
    "ca-certificates",
    "libc6",
    "libssl3",
    "libgcc-s1",
    "gcc-12-base",
    "libgomp1",
    "libstdc++6",
];

/// Every package the lock holds.
pub fn all_packages() -> std::collections::BTreeSet<&'static str> {
    [BASE, NODE, PAUSE, DISTROLESS_CC]
        .into_iter()
        .flatten()
        .copied()
        .collect()
}

/// The `.deb`s of `names`, fetched and checked against the lock.
pub fn packages<'a>(
    names: &[&str],
    lock: &'a BTreeMap<String, Locked>,
    cache: &Path,
) -> Result<Vec<(&'a Locked, std::path::PathBuf)>> {
    names
        .iter()
        .map(|name| {
            let locked = lock.get(*name).with_context(|| {
                format!(
                    "{name} is not in images/debian.lock.json: run `cargo xtask images \
                     --update-lock` and commit the lock"
                )
            })?;
            Ok((locked, debs::fetch(locked, cache)?))
        })
        .collect()
}

/// Unpacks `debs` into a tree and checks that, with `below` (the packages of the layers under
/// it), they hold their own dependencies.
fn unpack_all(
    image: &str,
    debs: &[(&Locked, std::path::PathBuf)],
    below: &[(&Locked, std::path::PathBuf)],
) -> Result<Tree> {
    let mut tree = Tree::default();
    let mut controls = BTreeMap::new();
    for (locked, deb) in below.iter().chain(debs) {
        controls.insert(locked.name.clone(), debs::control(deb)?);
    }
    debs::check_closure(image, &controls)?;
    for (locked, deb) in debs {
        debs::unpack(deb, &locked.name, &mut tree)
            .with_context(|| format!("cannot unpack {}", deb.display()))?;
    }
    Ok(tree)
}

/// The base layer: [`BASE`]'s files, the CA bundle their maintainer scripts would have made,
/// the users and groups, and a home for `nonroot`.
pub fn base(debs: &[(&Locked, std::path::PathBuf)]) -> Result<Tree> {
    let mut tree = unpack_all("base", debs, &[])?;
    let bundle = ca_bundle(&tree)?;
    tree.file(
        "/etc/ssl/certs/ca-certificates.crt",
        Meta::root(0o644),
        Content::Bytes(bundle),
    );
    let text = |s: &str| Content::Bytes(s.as_bytes().to_vec());
    tree.file(
        "/etc/passwd",
        Meta::root(0o644),
        text(
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
             nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        ),
    );
    tree.file(
        "/etc/group",
        Meta::root(0o644),
        text("root:x:0:\ntty:x:5:\nstaff:x:50:\nnogroup:x:65534:\nnonroot:x:65532:\n"),
    );
    tree.file(
        "/etc/nsswitch.conf",
        Meta::root(0o644),
        text("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"),
    );
    tree.dir(
        "/home/nonroot",
        Meta {
            mode: 0o700,
            uid: NONROOT,
            gid: NONROOT,
        },
    );
    tree.dir("/tmp", Meta::root(0o1777));
    Ok(tree)
}

/// What `update-ca-certificates` writes: every certificate of the package, in name order, each
/// ending with a newline.
fn ca_bundle(tree: &Tree) -> Result<Vec<u8>> {
    let mut bundle = Vec::new();
    for (path, node) in tree.iter() {
        let inside = path.to_string_lossy();
        if !(inside.starts_with("usr/share/ca-certificates/") && inside.ends_with(".crt")) {
            continue;
        }
        if let Node::File(_, Content::Bytes(pem)) = node {
            bundle.extend_from_slice(pem);
            if !pem.ends_with(b"\n") {
                bundle.push(b'\n');
            }
        }
    }
    if bundle.is_empty() {
        bail!("ca-certificates holds no certificate under /usr/share/ca-certificates");
    }
    Ok(bundle)
}

/// Node.js and its libraries (on top of the base, whose packages are `below`).
pub fn node(
    debs: &[(&Locked, std::path::PathBuf)],
    below: &[(&Locked, std::path::PathBuf)],
) -> Result<Tree> {
    let tree = unpack_all("azurite", debs, below)?;
    if tree.get("/usr/bin/node").is_none() {
        bail!("the nodejs package holds no /usr/bin/node");
    }
    Ok(tree)
}

/// The static pause process, nothing else.
pub fn pause(debs: &[(&Locked, std::path::PathBuf)]) -> Result<Tree> {
    let mut tree = unpack_all("pause", debs, &[])?;
    tree.retain(|path, _| {
        let p = path.to_string_lossy();
        ["usr/bin/catatonit", "usr/share/doc", "var/lib/dpkg"]
            .iter()
            .any(|keep| p.starts_with(keep) || keep.starts_with(&*p))
    });
    if tree.get("/usr/bin/catatonit").is_none() {
        bail!("the catatonit package holds no /usr/bin/catatonit");
    }
    Ok(tree)
}

/// Azurite's npm tree (installed by `npm ci` into `node_modules`) under `/opt/azurite`, and
/// its commands on PATH. NB: npm's launchers start with `#!/usr/bin/env node`, and the image
/// has no `env`; they are rewritten to name Debian's `/usr/bin/node`.
pub fn azurite(node_modules: &Path) -> Result<Tree> {
    let mut tree = Tree::default();
    tree.add_host_dir(node_modules, "/opt/azurite/node_modules")?;
    let commands = [
        ("azurite", "dist/src/azurite.js"),
        ("azurite-blob", "dist/src/blob/main.js"),
        ("azurite-queue", "dist/src/queue/main.js"),
        ("azurite-table", "dist/src/table/main.js"),
    ];
    for (command, script) in commands {
        let inside = format!("/opt/azurite/node_modules/azurite/{script}");
        let host = node_modules.join("azurite").join(script);
        let text = std::fs::read_to_string(&host)
            .with_context(|| format!("cannot read {}", host.display()))?;
        let body = text
            .strip_prefix("#!/usr/bin/env node\n")
            .with_context(|| {
                format!(
                    "{} does not start with `#!/usr/bin/env node`",
                    host.display()
                )
            })?;
        tree.file(
            &inside,
            Meta::root(0o755),
            Content::Bytes(format!("#!/usr/bin/node\n{body}").into_bytes()),
        );
        tree.symlink(&format!("/usr/local/bin/{command}"), &inside);
    }
    Ok(tree)
}

/// One binary of ours at `/usr/local/bin/<name>`.
pub fn binary(path: &Path, name: &str) -> Result<Tree> {
    if !path.is_file() {
        bail!("{} is missing: build it first", path.display());
    }
    let mut tree = Tree::default();
    tree.file(
        &format!("/usr/local/bin/{name}"),
        Meta::root(0o755),
        Content::File(path.to_path_buf()),
    );
    Ok(tree)
}

/// Fails naming what the ELF file `binary` needs (its interpreter and `NEEDED` libraries) that
/// none of `layers` hold in the loader's directories.
pub fn check_links(binary: &Path, layers: &[&Tree]) -> Result<()> {
    let out = crate::shell::output(
        std::process::Command::new("readelf")
            .args(["--wide", "--program-headers", "--dynamic"])
            .arg(binary),
    )
    .context("checking what the binary links needs readelf (binutils)")?;
    let mut needed = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.split("[Requesting program interpreter: ").nth(1) {
            needed.push(rest.trim_end_matches(']').to_owned());
        }
        if line.contains("(NEEDED)")
            && let Some(lib) = line.split("Shared library: [").nth(1)
        {
            let lib = lib.trim_end_matches(']');
            needed.push(format!("/lib/x86_64-linux-gnu/{lib}"));
        }
    }
    let held = |path: &str| {
        let usr = format!("/usr{path}");
        layers
            .iter()
            .any(|t| t.get(path).is_some() || t.get(&usr).is_some())
    };
    let missing: Vec<&String> = needed.iter().filter(|p| !held(p)).collect();
    if !missing.is_empty() {
        bail!(
            "{} needs {} which the image does not hold: add the package that ships it to the \
             image's list in xtask/src/images/rootfs.rs",
            binary.display(),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
