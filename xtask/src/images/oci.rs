//! The OCI documents of an image (config, manifest, index) and where they go: an OCI image
//! layout directory, and one archive holding that layout plus Docker's `manifest.json`, which
//! `ctr images import`, `skopeo copy oci-archive:…`, `kind load image-archive` and `docker load`
//! all read. Every document is serialized with sorted keys, so the same inputs give the same
//! digests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use anyhow::{Context, Result};
use oci_spec::image::{
    self as oci, Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os,
    RootFsBuilder,
};

use super::tree::{Content, Layer, Meta, Tree, sha256};

/// How to run an image and what it says about itself.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `uid:gid` it runs as.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `8080/tcp`, ...
    pub ports: Vec<String>,
    /// OCI labels (`org.opencontainers.image.*`), also the manifest's annotations.
    pub labels: Vec<(String, String)>,
}

/// One layer of an image with the line that says what made it.
#[derive(Debug, Clone)]
pub struct Stacked {
    pub layer: Layer,
    pub created_by: String,
}

/// A finished image.
#[derive(Debug, Clone)]
pub struct Image {
    /// `registry/repository:tag`.
    pub reference: String,
    /// The manifest's digest, the image's identity.
    pub digest: String,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layers: Vec<Stacked>,
}

impl Image {
    /// Bytes of the compressed layers and documents (what a registry stores, and a pull moves).
    pub fn compressed(&self) -> u64 {
        self.layers.iter().map(|l| l.layer.size).sum::<u64>()
            + self.manifest.len() as u64
            + self.config.len() as u64
    }

    /// Bytes of the uncompressed layer tars (about what it takes unpacked on a node).
    pub fn unpacked(&self) -> u64 {
        self.layers.iter().map(|l| l.layer.unpacked).sum()
    }

    /// The tag of its reference (`0.1.0`).
    pub fn tag(&self) -> &str {
        self.reference
            .rsplit_once(':')
            .map_or("latest", |(_, tag)| tag)
    }
}

/// JSON with sorted keys and no whitespace.
fn canonical(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    // NB: serde_json's Value keeps maps sorted (no preserve_order here); oci-spec's HashMaps
    // would otherwise serialize in a different order on every run.
    Ok(serde_json::to_vec(&serde_json::to_value(value)?)?)
}

fn descriptor(media_type: MediaType, digest: &str, size: u64) -> Result<Descriptor> {
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .digest(Digest::from_str(digest)?)
        .size(size)
        .build()?)
}

/// The config and manifest of `layers` run as `runtime`, dated `created` (RFC 3339).
pub fn assemble(
    reference: &str,
    layers: Vec<Stacked>,
    runtime: &Runtime,
    created: &str,
) -> Result<Image> {
    let labels: HashMap<String, String> = runtime.labels.iter().cloned().collect();
    let history = layers
        .iter()
        .map(|l| {
            HistoryBuilder::default()
                .created(created.to_owned())
                .created_by(l.created_by.clone())
                .build()
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let config = ImageConfigurationBuilder::default()
        .created(created.to_owned())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .user(runtime.user.clone())
                .env(runtime.env.clone())
                .entrypoint(runtime.entrypoint.clone())
                .cmd(runtime.cmd.clone())
                .exposed_ports(runtime.ports.clone())
                .working_dir("/".to_owned())
                .labels(labels.clone())
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers".to_owned())
                .diff_ids(
                    layers
                        .iter()
                        .map(|l| l.layer.diff_id.clone())
                        .collect::<Vec<_>>(),
                )
                .build()?,
        )
        .history(history)
        .build()?;
    let config = canonical(&config)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(oci::SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &sha256(&config),
            config.len() as u64,
        )?)
        .layers(
            layers
                .iter()
                .map(|l| descriptor(MediaType::ImageLayerGzip, &l.layer.digest, l.layer.size))
                .collect::<Result<Vec<_>>>()?,
        )
        .annotations(labels)
        .build()?;
    let manifest = canonical(&manifest)?;
    Ok(Image {
        reference: reference.to_owned(),
        digest: sha256(&manifest),
        manifest,
        config,
        layers,
    })
}

/// The index naming `image`: the tag as `org.opencontainers.image.ref.name` (what `skopeo`'s
/// `oci:<dir>:<tag>` selects) and the whole reference as `io.containerd.image.name` (the name
/// `ctr images import` gives it, as `docker save` does).
fn index(image: &Image) -> Result<Vec<u8>> {
    let mut manifest = descriptor(
        MediaType::ImageManifest,
        &image.digest,
        image.manifest.len() as u64,
    )?;
    manifest.set_annotations(Some(HashMap::from([
        (oci::ANNOTATION_REF_NAME.to_owned(), image.tag().to_owned()),
        (
            "io.containerd.image.name".to_owned(),
            image.reference.clone(),
        ),
    ])));
    canonical(
        &ImageIndexBuilder::default()
            .schema_version(oci::SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![manifest])
            .build()?,
    )
}

/// Docker's `manifest.json` for the same blobs (`docker load` reads it).
fn docker_manifest(image: &Image) -> Result<Vec<u8>> {
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    canonical(&serde_json::json!([{
        "Config": blob(&sha256(&image.config)),
        "RepoTags": [image.reference],
        "Layers": image.layers.iter().map(|l| blob(&l.layer.digest)).collect::<Vec<_>>(),
    }]))
}

/// Writes `image` as an OCI image layout in `dir` (replacing what was there), taking the layer
/// blobs from `blobs`; returns the layout as a [`Tree`] (for the archive).
pub fn write_layout(image: &Image, blobs: &Path, dir: &Path) -> Result<Tree> {
    let _ = std::fs::remove_dir_all(dir);
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir)?;
    let mut tree = Tree::default();
    let mut put = |name: &str, bytes: Vec<u8>| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        tree.file(name, Meta::root(0o644), Content::Bytes(bytes));
        Ok(())
    };
    put(
        "oci-layout",
        canonical(
            &oci::OciLayoutBuilder::default()
                .image_layout_version("1.0.0".to_owned())
                .build()?,
        )?,
    )?;
    put("index.json", index(image)?)?;
    put("manifest.json", docker_manifest(image)?)?;
    let blob_name = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    put(&blob_name(&image.digest), image.manifest.clone())?;
    put(&blob_name(&sha256(&image.config)), image.config.clone())?;
    for stacked in &image.layers {
        let name = blob_name(&stacked.layer.digest);
        let from = blobs.join(stacked.layer.digest.trim_start_matches("sha256:"));
        let to = dir.join(&name);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
        tree.file(&name, Meta::root(0o644), Content::File(to));
    }
    Ok(tree)
}

/// Writes the layout `tree` as an uncompressed tar at `archive`, dated `mtime`.
pub fn write_archive(tree: &Tree, archive: &Path, mtime: u64) -> Result<PathBuf> {
    let file = std::fs::File::create(archive)
        .with_context(|| format!("cannot create {}", archive.display()))?;
    tree.write_tar(std::io::BufWriter::new(file), mtime)?;
    Ok(archive.to_path_buf())
}
