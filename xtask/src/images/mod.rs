//! `cargo xtask images`: the container images, built without a Docker daemon and without
//! pulling anything from an image registry.
//!
//! Each image is a distroless-style base assembled from pinned Debian packages (`debs`,
//! `rootfs`) plus a layer of its own (a binary of ours, or Azurite's npm tree), written as
//! reproducible layers (`tree`), described by OCI documents (`oci`) and an SPDX bill of
//! materials (`sbom`). Layers are dated by their inputs (the package lock's commit, the npm
//! lock's, the checkout's HEAD), clamped to `SOURCE_DATE_EPOCH` when set, and cached by their
//! inputs' hashes, so a second build of the same commit gives the same digests and takes
//! seconds.

mod debs;
mod oci;
mod rootfs;
mod sbom;
mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub use oci::Image;
use oci::{Runtime, Stacked};
use tree::{Layer, Tree, sha256};

use crate::shell::{cargo, on_path, output, root, step, target_dir};

/// Workspace version, also the chart's appVersion and the image tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the repository lives (the images' `org.opencontainers.image.source`).
const SOURCE: &str = "https://github.com/cqrs-operator/cqrs-operator";
/// Bump when the layer format changes, so cached layers are rebuilt.
const LAYER_FORMAT: &str = "1";

/// Operator image.
pub fn operator_image() -> String {
    format!("ghcr.io/cqrs-operator/cqrs-operator:{VERSION}")
}
/// Reference app image.
pub fn app_image() -> String {
    format!("ghcr.io/cqrs-operator/reference-app:{VERSION}")
}
/// Azurite image, under the name the chart's demo uses.
pub fn azurite_image() -> String {
    format!(
        "mcr.microsoft.com/azure-storage/azurite:{}",
        crate::tools::AZURITE_VERSION
    )
}
/// The local node's pod sandbox (pause) image.
pub fn pause_image() -> String {
    format!("localhost/cqrs-operator/pause:{VERSION}")
}

/// Which binaries the images hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binaries {
    /// `cargo build --release` first (what users ship).
    Release,
    /// `cargo build` (the dev profile) first.
    Debug,
    /// Already built into this directory (the tests' own build).
    In(PathBuf),
}

/// What `cargo xtask images` made.
#[derive(Debug)]
pub struct Built {
    /// Each image with its files.
    pub images: Vec<Output>,
    /// distroless `cc-debian12`'s package set + the operator binary: `(compressed, unpacked)`.
    pub distroless_cc: (u64, u64),
}

/// One image and where it was written.
#[derive(Debug)]
pub struct Output {
    pub image: Image,
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// The archive (`ctr images import`, `docker load`, `kind load image-archive`).
    pub archive: PathBuf,
    /// The SPDX document.
    pub sbom: PathBuf,
}

impl Built {
    /// The image named `reference`.
    pub fn get(&self, reference: &str) -> Option<&Output> {
        self.images.iter().find(|o| o.image.reference == reference)
    }
}

const USAGE: &str =
    "usage: cargo xtask images [--debug] [--push <registry> [--insecure]] [--update-lock]";

/// `cargo xtask images [...]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut binaries = Binaries::Release;
    let mut push = None;
    let mut insecure = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--debug" => binaries = Binaries::Debug,
            "--insecure" => insecure = true,
            "--push" => {
                push = Some(
                    iter.next()
                        .filter(|r| !r.starts_with('-'))
                        .with_context(|| {
                            format!("--push needs a registry, e.g. --push ghcr.io/you\n{USAGE}")
                        })?
                        .clone(),
                )
            }
            "--update-lock" => {
                println!("\n==> locking the Debian packages the Debian archives serve now");
                return debs::update_lock(&rootfs::all_packages());
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    let built = build(&binaries)?;
    print_table(&built);
    if let Some(registry) = push {
        push_images(&built, &registry, insecure)?;
    }
    Ok(())
}

/// Builds every image from `binaries` into `target/images/`.
pub fn build(binaries: &Binaries) -> Result<Built> {
    let bin_dir = match binaries {
        Binaries::In(dir) => dir.clone(),
        Binaries::Release => build_binaries(Some("release"))?,
        Binaries::Debug => build_binaries(None)?,
    };
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(v.trim().parse::<u64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH is {v:?}; it must be seconds since 1970 (e.g. `git log -1 --format=%ct`)")
        })?),
        Err(_) => None,
    };
    Builder::new(target_dir().join("images"), epoch)?.build_all(&bin_dir)
}

/// Checks every image's SBOM with PyPI spdx-tools (`python` has it installed).
pub fn validate_sboms(built: &Built, python: &Path) -> Result<()> {
    for o in &built.images {
        sbom::validate(python, &o.sbom)?;
    }
    println!(
        "    {} SBOMs valid SPDX 2.3 (spdx-tools)",
        built.images.len()
    );
    Ok(())
}

/// `cargo build` of the two binaries in `profile` (the dev profile when `None`); returns the
/// directory they are in.
fn build_binaries(profile: Option<&str>) -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "--locked"]);
    if let Some(profile) = profile {
        build.arg(format!("--{profile}"));
    }
    step(
        &format!(
            "cargo build{} (cqrs-operator, reference-app)",
            profile.map(|p| format!(" --{p}")).unwrap_or_default()
        ),
        build.args(["--package", "cqrs-operator", "--package", "reference-app"]),
    )?;
    Ok(target_dir().join(profile.unwrap_or("debug")))
}

/// The state of one build: where layers go, how they are dated.
struct Builder {
    out: PathBuf,
    blobs: PathBuf,
    cache: PathBuf,
    debs: PathBuf,
    lock: std::collections::BTreeMap<String, debs::Locked>,
    /// Seconds since the epoch: the newest any file may be dated.
    epoch: Option<u64>,
    /// HEAD's commit time (clamped), the images' `created`.
    created: u64,
    revision: String,
}

impl Builder {
    /// A builder writing into `out`, dating nothing after `epoch` (`SOURCE_DATE_EPOCH`).
    fn new(out: PathBuf, epoch: Option<u64>) -> Result<Self> {
        let head = git_time(None)?;
        let revision = output(
            Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(root()),
        )?
        .trim()
        .to_owned();
        let dirty = !output(
            Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .current_dir(root()),
        )?
        .trim()
        .is_empty();
        let mut builder = Builder {
            blobs: out.join(".layers/blobs"),
            cache: out.join(".layers"),
            debs: crate::cluster::toolchain::cache_base()?.join("debs"),
            lock: debs::read_lock()?,
            out,
            epoch,
            created: 0,
            revision: if dirty {
                format!("{revision}-dirty")
            } else {
                revision
            },
        };
        builder.created = builder.clamp(head);
        Ok(builder)
    }

    fn clamp(&self, time: u64) -> u64 {
        self.epoch.map_or(time, |e| e.min(time))
    }

    /// The commit time of `path` (its last change), clamped.
    fn dated(&self, path: &str) -> Result<u64> {
        Ok(self.clamp(git_time(Some(path))?))
    }

    /// The layer of `tree()` for `inputs` (a description of everything it is made from), from
    /// the cache when it was built before.
    fn layer(
        &self,
        inputs: &str,
        mtime: u64,
        tree: impl FnOnce() -> Result<Tree>,
    ) -> Result<Layer> {
        let key = sha256(format!("{LAYER_FORMAT}\n{mtime}\n{inputs}").as_bytes());
        let record = self
            .cache
            .join(format!("{}.json", key.trim_start_matches("sha256:")));
        if let Ok(text) = std::fs::read_to_string(&record)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let layer = Layer {
                digest: v["digest"].as_str().unwrap_or_default().to_owned(),
                size: v["size"].as_u64().unwrap_or_default(),
                diff_id: v["diff_id"].as_str().unwrap_or_default().to_owned(),
                unpacked: v["unpacked"].as_u64().unwrap_or_default(),
            };
            if self
                .blobs
                .join(layer.digest.trim_start_matches("sha256:"))
                .is_file()
            {
                return Ok(layer);
            }
        }
        let layer = tree()?.write_layer(&self.blobs, mtime)?;
        std::fs::create_dir_all(&self.cache)?;
        std::fs::write(
            &record,
            serde_json::json!({
                "digest": layer.digest, "size": layer.size,
                "diff_id": layer.diff_id, "unpacked": layer.unpacked,
            })
            .to_string(),
        )?;
        Ok(layer)
    }

    /// The layer of Debian packages `names` (with the packages of the layers below).
    fn package_layer(
        &self,
        names: &[&str],
        below: &[&str],
        make: impl FnOnce(&[(&debs::Locked, PathBuf)], &[(&debs::Locked, PathBuf)]) -> Result<Tree>,
    ) -> Result<Layer> {
        let inputs: Vec<String> = names
            .iter()
            .chain(std::iter::once(&"--"))
            .chain(below)
            .map(|n| {
                self.lock.get(*n).map_or_else(
                    || n.to_string(),
                    |p| format!("{} {} {}", p.name, p.version, p.sha256),
                )
            })
            .collect();
        let mtime = self.dated("images/debian.lock.json")?;
        self.layer(&inputs.join("\n"), mtime, || {
            let debs = rootfs::packages(names, &self.lock, &self.debs)?;
            let under = rootfs::packages(below, &self.lock, &self.debs)?;
            make(&debs, &under)
        })
    }

    fn build_all(&self, bin_dir: &Path) -> Result<Built> {
        println!("\n==> container images (into {})", self.out.display());
        let started = std::time::Instant::now();
        let base = self.base_layer()?;
        let node = self.package_layer(rootfs::NODE, rootfs::BASE, rootfs::node)?;
        let pause = self.package_layer(rootfs::PAUSE, &[], |debs, _| rootfs::pause(debs))?;
        let azurite = self.azurite_layer()?;
        let mut images = vec![
            self.binary_image(
                &base,
                &bin_dir.join("cqrs-operator"),
                &operator_image(),
                "Runs CqrsApps: Azure Storage queues and blobs, a web role, worker roles autoscaled on queue depth",
                &["8080/tcp"],
                &["run"],
            )?,
            self.binary_image(
                &base,
                &bin_dir.join("reference-app"),
                &app_image(),
                "The reference CQRS app: registration and pie-shop inventory (web and worker roles)",
                &["8080/tcp", "9090/tcp"],
                &[],
            )?,
        ];
        let azurite_runtime = Runtime {
            user: "65532:65532".into(),
            entrypoint: vec![],
            cmd: [
                "azurite", "--location", "/data", "--blobHost", "0.0.0.0", "--queueHost", "0.0.0.0",
                "--tableHost", "0.0.0.0", "--disableProductStyleUrl",
            ]
            .map(str::to_owned)
            .to_vec(),
            env: default_env(),
            ports: ["10000/tcp", "10001/tcp", "10002/tcp"].map(str::to_owned).to_vec(),
            labels: self.labels(
                "azurite",
                "Azurite (the Azure Storage emulator from npm) on Debian's Node.js, built by cqrs-operator's tooling for its local cluster and the chart's demo",
                crate::tools::AZURITE_VERSION,
                "MIT",
            ),
        };
        let mut components = sbom::debs(&self.locked(&[rootfs::BASE, rootfs::NODE].concat()));
        components.extend(sbom::npm(&root().join("images/azurite/package-lock.json"))?);
        images.push(self.finish(
            &azurite_image(),
            "azurite",
            vec![
                self.stacked(
                    &base,
                    "debian packages: base (glibc, libgcc, CA certificates, tzdata, nonroot)",
                ),
                self.stacked(&node, "debian packages: nodejs 18 and its libraries"),
                self.stacked(
                    &azurite,
                    "npm ci: azurite (images/azurite/package-lock.json)",
                ),
            ],
            &azurite_runtime,
            &components,
        )?);
        let pause_runtime = Runtime {
            user: "65535:65535".into(),
            entrypoint: vec!["/usr/bin/catatonit".into(), "-P".into()],
            cmd: vec![],
            env: default_env(),
            ports: vec![],
            labels: self.labels(
                "pause",
                "The local node's pod sandbox: catatonit -P from Debian",
                VERSION,
                "GPL-2.0-or-later",
            ),
        };
        images.push(self.finish(
            &pause_image(),
            "pause",
            vec![self.stacked(&pause, "debian packages: catatonit")],
            &pause_runtime,
            &sbom::debs(&self.locked(rootfs::PAUSE)),
        )?);
        let distroless =
            self.package_layer(rootfs::DISTROLESS_CC, &[], |debs, _| rootfs::base(debs))?;
        let operator_bin = &images[0].image.layers[1].layer;
        let distroless_cc = (
            distroless.size + operator_bin.size,
            distroless.unpacked + operator_bin.unpacked,
        );
        println!(
            "    {} images in {:.1}s",
            images.len(),
            started.elapsed().as_secs_f32()
        );
        Ok(Built {
            images,
            distroless_cc,
        })
    }

    fn base_layer(&self) -> Result<Layer> {
        self.package_layer(rootfs::BASE, &[], |debs, _| rootfs::base(debs))
    }

    /// The image of one binary of ours on the base: `/usr/local/bin/<file name>` as its
    /// entrypoint, run as `nonroot`. What the binary links is checked against the base when
    /// its layer is built (the layer is keyed by the base too, so a new base checks it again).
    fn binary_image(
        &self,
        base: &Layer,
        binary: &Path,
        reference: &str,
        description: &str,
        ports: &[&str],
        cmd: &[&str],
    ) -> Result<Output> {
        let name = binary
            .file_name()
            .and_then(|n| n.to_str())
            .context("a binary has a file name")?;
        let hash = debs::file_sha256(binary)?;
        let inputs = format!("binary {name} {hash} on {}", base.digest);
        let bin_layer = self.layer(&inputs, self.created, || {
            let base_tree = rootfs::base(&rootfs::packages(rootfs::BASE, &self.lock, &self.debs)?)?;
            rootfs::check_links(binary, &[&base_tree])?;
            rootfs::binary(binary, name)
        })?;
        let runtime = Runtime {
            user: "65532:65532".into(),
            entrypoint: vec![format!("/usr/local/bin/{name}")],
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: default_env(),
            ports: ports.iter().map(|s| s.to_string()).collect(),
            labels: self.labels(name, description, VERSION, "MIT"),
        };
        let layers = vec![
            self.stacked(
                base,
                "debian packages: base (glibc, libgcc, CA certificates, tzdata, nonroot)",
            ),
            self.stacked(&bin_layer, &format!("cargo build: /usr/local/bin/{name}")),
        ];
        let mut components = sbom::debs(&self.locked(rootfs::BASE));
        components.extend(sbom::crates(name)?);
        self.finish(reference, name, layers, &runtime, &components)
    }

    fn locked(&self, names: &[&str]) -> Vec<&debs::Locked> {
        names.iter().filter_map(|n| self.lock.get(*n)).collect()
    }

    fn stacked(&self, layer: &Layer, created_by: &str) -> Stacked {
        Stacked {
            layer: layer.clone(),
            created_by: format!("cargo xtask images: {created_by}"),
        }
    }

    fn labels(
        &self,
        title: &str,
        description: &str,
        version: &str,
        licenses: &str,
    ) -> Vec<(String, String)> {
        [
            ("org.opencontainers.image.title", title.to_owned()),
            (
                "org.opencontainers.image.description",
                description.to_owned(),
            ),
            ("org.opencontainers.image.source", SOURCE.to_owned()),
            ("org.opencontainers.image.revision", self.revision.clone()),
            ("org.opencontainers.image.version", version.to_owned()),
            ("org.opencontainers.image.created", rfc3339(self.created)),
            ("org.opencontainers.image.licenses", licenses.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Azurite's npm tree, installed by `npm ci` from the committed lock.
    fn azurite_layer(&self) -> Result<Layer> {
        let dir = root().join("images/azurite");
        let package_lock = std::fs::read(dir.join("package-lock.json"))
            .context("cannot read images/azurite/package-lock.json")?;
        let mtime = self.dated("images/azurite/package-lock.json")?;
        self.layer(&format!("npm azurite {}", sha256(&package_lock)), mtime, || {
            if !on_path("npm") {
                bail!("the Azurite image installs its npm tree with npm, which is not on PATH (install Node.js 18+ with npm)");
            }
            let staging = self.out.join(".azurite-npm");
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging)?;
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(dir.join(file), staging.join(file))?;
            }
            step(
                "npm ci: Azurite's tree from images/azurite/package-lock.json",
                Command::new("npm")
                    .args(["ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&staging),
            )?;
            rootfs::azurite(&staging.join("node_modules"))
        })
    }

    /// Writes `image`'s layout, archive and bill of materials.
    fn finish(
        &self,
        reference: &str,
        name: &str,
        layers: Vec<Stacked>,
        runtime: &Runtime,
        components: &[sbom::Component],
    ) -> Result<Output> {
        let image = oci::assemble(reference, layers, runtime, &rfc3339(self.created))?;
        let layout = self.out.join(name);
        let tree = oci::write_layout(&image, &self.blobs, &layout)?;
        let archive =
            oci::write_archive(&tree, &self.out.join(format!("{name}.tar")), self.created)?;
        let sbom = self.out.join(format!("{name}.spdx.json"));
        let document = sbom::document(reference, &image.digest, &rfc3339(self.created), components);
        std::fs::write(&sbom, serde_json::to_string_pretty(&document)? + "\n")?;
        Ok(Output {
            image,
            layout,
            archive,
            sbom,
        })
    }
}

fn default_env() -> Vec<String> {
    vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_owned(),
    ]
}

/// Commit time (seconds) of HEAD, or of the last commit that changed `path`; HEAD's when `path`
/// was never committed.
fn git_time(path: Option<&str>) -> Result<u64> {
    let mut cmd = Command::new("git");
    cmd.args(["log", "-1", "--format=%ct"]).current_dir(root());
    if let Some(path) = path {
        cmd.args(["--", path]);
    }
    let out =
        output(&mut cmd).context("images are dated by git commits: is this a git checkout?")?;
    match out.trim() {
        "" if path.is_some() => git_time(None),
        t => t
            .parse()
            .with_context(|| format!("git log printed {t:?}, not a time")),
    }
}

/// RFC 3339 in UTC.
fn rfc3339(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_table(built: &Built) {
    println!(
        "\n{:<52} {:<19} {:>11} {:>11}",
        "image", "digest", "compressed", "unpacked"
    );
    for o in &built.images {
        println!(
            "{:<52} {:<19} {:>11} {:>11}",
            o.image.reference,
            &o.image.digest[..19],
            mib(o.image.compressed()),
            mib(o.image.unpacked())
        );
    }
    println!(
        "{:<52} {:<19} {:>11} {:>11}",
        "(distroless cc-debian12 package set + cqrs-operator)",
        "for comparison",
        mib(built.distroless_cc.0),
        mib(built.distroless_cc.1)
    );
    if let Some(o) = built.images.first() {
        println!(
            "\nwritten to {}: <name>/ (OCI layout), <name>.tar (archive), <name>.spdx.json (SBOM)",
            o.layout.parent().unwrap_or(Path::new(".")).display()
        );
    }
    println!(
        "load into kind:    kind load image-archive target/images/cqrs-operator.tar\n\
         load into Docker:  docker load -i target/images/cqrs-operator.tar\n\
         push:              cargo xtask images --push <registry>"
    );
}

/// Copies the operator and reference app images to `registry` with skopeo.
fn push_images(built: &Built, registry: &str, insecure: bool) -> Result<()> {
    if !on_path("skopeo") {
        bail!(
            "--push copies the images with skopeo, which is not on PATH: install it \
             (apt-get install skopeo, dnf install skopeo, brew install skopeo)"
        );
    }
    let registry = registry.trim_end_matches('/');
    for reference in [operator_image(), app_image()] {
        let o = built
            .get(&reference)
            .with_context(|| format!("{reference} was not built"))?;
        let repository = reference
            .rsplit_once(':')
            .map_or(reference.as_str(), |(r, _)| r)
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let dest = format!("docker://{registry}/{repository}:{}", o.image.tag());
        let mut cmd = Command::new("skopeo");
        cmd.arg("copy");
        if insecure {
            cmd.arg("--dest-tls-verify=false");
        }
        cmd.arg(format!("oci:{}:{}", o.layout.display(), o.image.tag()))
            .arg(&dest);
        step(&format!("pushing {reference} to {dest}"), &mut cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary under the name of a workspace package (its SBOM lists that package's
    /// crates), in `dir`.
    fn test_binary(dir: &Path) -> PathBuf {
        let bin = dir.join("xtask");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
        bin
    }

    fn build_in(dir: &Path, epoch: u64, binary: &Path) -> Output {
        let builder = Builder::new(dir.to_path_buf(), Some(epoch)).unwrap();
        for name in rootfs::BASE {
            let p = &builder.lock[*name];
            assert!(
                debs::cached(p, &builder.debs).is_some(),
                "{} {} is not in {}: run `cargo xtask images` once (cargo xtask test does) to fetch \
                 the locked Debian packages",
                p.name,
                p.version,
                builder.debs.display()
            );
        }
        let base = builder.base_layer().unwrap();
        builder
            .binary_image(&base, binary, "localhost/test/xtask:0", "a test", &[], &[])
            .unwrap()
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn two_builds_from_fresh_caches_give_the_same_digest_and_the_same_archive() {
        let dir = tempdir("twice");
        let binary = test_binary(&dir.join("bin"));
        let a = build_in(&dir.join("a"), 1_700_000_000, &binary);
        let b = build_in(&dir.join("b"), 1_700_000_000, &binary);
        assert_eq!(a.image.digest, b.image.digest);
        assert_eq!(
            debs::file_sha256(&a.archive).unwrap(),
            debs::file_sha256(&b.archive).unwrap(),
            "the archives are byte for byte the same"
        );
        assert_eq!(
            std::fs::read(&a.sbom).unwrap(),
            std::fs::read(&b.sbom).unwrap(),
            "so are the bills of materials"
        );
        // Another SOURCE_DATE_EPOCH dates every file and the image otherwise.
        let c = build_in(&dir.join("c"), 1_600_000_000, &binary);
        assert_ne!(a.image.digest, c.image.digest);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_base_is_distroless_shaped() {
        let dir = tempdir("base");
        let binary = test_binary(&dir.join("bin"));
        let out = build_in(&dir.join("out"), 1_700_000_000, &binary);
        let config: serde_json::Value = serde_json::from_slice(&out.image.config).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        let labels = &config["config"]["Labels"];
        for label in ["source", "revision", "version", "created"] {
            assert!(
                labels[format!("org.opencontainers.image.{label}")].is_string(),
                "{label}: {labels}"
            );
        }
        let base = &out.image.layers[0].layer;
        let blob = out
            .layout
            .join("blobs/sha256")
            .join(base.digest.trim_start_matches("sha256:"));
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(blob).unwrap(),
        ));
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let (uid, mode, mtime) = (
                entry.header().uid().unwrap(),
                entry.header().mode().unwrap(),
                entry.header().mtime().unwrap(),
            );
            let mut text = String::new();
            if path.starts_with("etc/passwd") || path.starts_with("etc/group") {
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            }
            files.insert(
                path,
                (uid, mode, mtime, text, entry.header().size().unwrap()),
            );
        }
        assert!(files["etc/passwd"].3.contains("nonroot:x:65532:65532:"));
        assert!(files["etc/group"].3.contains("nonroot:x:65532:"));
        assert_eq!(
            (files["home/nonroot/"].0, files["home/nonroot/"].1),
            (65532, 0o700)
        );
        assert_eq!(files["tmp/"].1, 0o1777);
        assert!(
            files["etc/ssl/certs/ca-certificates.crt"].4 > 100_000,
            "the CA bundle"
        );
        for present in [
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libgcc_s.so.1",
            "usr/share/zoneinfo/Europe/Paris",
            "etc/services",
            "var/lib/dpkg/status.d/libc6",
            "usr/share/doc/libc6/copyright",
        ] {
            assert!(files.contains_key(present), "{present} is missing");
        }
        assert!(files.keys().all(|p| !p.starts_with("usr/share/man/")));
        assert!(
            files.values().all(|f| f.2 <= 1_700_000_000),
            "no file is newer than the epoch"
        );
        let python = std::env::var_os("CQRS_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".tools/venv/bin/python"));
        assert!(
            python.is_file(),
            "validating the SBOM needs PyPI spdx-tools in .tools/venv: run `cargo xtask tools` \
             (or set CQRS_TEST_PYTHON)"
        );
        sbom::validate(&python, &out.sbom).unwrap();
        let sbom: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out.sbom).unwrap()).unwrap();
        let names: Vec<&str> = sbom["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            names.contains(&"libc6") && names.contains(&"serde_json"),
            "{names:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
