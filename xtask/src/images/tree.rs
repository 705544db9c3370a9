//! A layer's file system as a sorted tree, written as a reproducible tar: entries in path
//! order, owners and modes as given, one modification time for everything, no user or group
//! names, no device numbers; gzip without a timestamp or file name. The same tree gives the
//! same bytes, so the same digests.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

/// Who owns an entry and its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Meta {
    /// Owned by root with `mode`.
    pub const fn root(mode: u32) -> Self {
        Meta {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Held in memory.
    Bytes(Vec<u8>),
    /// Read from this host file when the layer is written.
    File(PathBuf),
}

/// One entry of a tree.
#[derive(Debug, Clone)]
pub enum Node {
    Dir(Meta),
    File(Meta, Content),
    Symlink(String),
}

/// A layer's entries by path (relative, no leading `/`).
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Node>,
}

/// What a written layer is: its gzip digest and size, and the digest of the uncompressed tar
/// (the config's `diff_id`).
#[derive(Debug, Clone)]
pub struct Layer {
    /// `sha256:…` of the compressed blob.
    pub digest: String,
    /// Bytes of the compressed blob.
    pub size: u64,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub unpacked: u64,
}

fn relative(path: &str) -> PathBuf {
    PathBuf::from(path.trim_start_matches("./").trim_start_matches('/'))
}

impl Tree {
    /// A directory (its parents are added as root-owned 0755 directories when missing).
    pub fn dir(&mut self, path: &str, meta: Meta) {
        let path = relative(path);
        self.parents(&path);
        self.entries.insert(path, Node::Dir(meta));
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, meta: Meta, content: Content) {
        let path = relative(path);
        self.parents(&path);
        self.entries.insert(path, Node::File(meta, content));
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = relative(path);
        self.parents(&path);
        self.entries.insert(path, Node::Symlink(target.to_owned()));
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(&relative(path))
    }

    /// Every entry, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Node)> {
        self.entries.iter().map(|(p, n)| (p.as_path(), n))
    }

    /// Removes every entry for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Path, &Node) -> bool) {
        self.entries.retain(|p, n| keep(p, n));
    }

    /// Adds the files under `dir` on this host at `at`, all owned by root, keeping each file's
    /// executable bits (0755 or 0644) and symlinks as they are.
    pub fn add_host_dir(&mut self, dir: &Path, at: &str) -> Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(current) = stack.pop() {
            let rel = current.strip_prefix(dir).unwrap_or(&current);
            let inside = Path::new(at).join(rel);
            let inside = inside.to_string_lossy();
            let meta = std::fs::symlink_metadata(&current)
                .with_context(|| format!("cannot read {}", current.display()))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&current)?;
                self.symlink(&inside, &target.to_string_lossy());
            } else if meta.is_dir() {
                self.dir(&inside, Meta::root(0o755));
                for entry in std::fs::read_dir(&current)? {
                    stack.push(entry?.path());
                }
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                self.file(&inside, Meta::root(mode), Content::File(current.clone()));
            } else {
                bail!(
                    "{} is neither a file, a directory nor a symlink",
                    current.display()
                );
            }
        }
        Ok(())
    }

    fn parents(&mut self, path: &Path) {
        for parent in path.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            self.entries
                .entry(parent.to_path_buf())
                .or_insert(Node::Dir(Meta::root(0o755)));
        }
    }

    /// Writes the tree as a gzip-compressed tar into `blobs` (named by its digest), every entry
    /// dated `mtime` (seconds since the epoch).
    pub fn write_layer(&self, blobs: &Path, mtime: u64) -> Result<Layer> {
        std::fs::create_dir_all(blobs)?;
        let partial = blobs.join(format!(".layer-{}.partial", std::process::id()));
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let compressed = Hashing::new(std::io::BufWriter::new(file));
        // NB: GzBuilder writes no file name and a zero timestamp unless told otherwise.
        let gzip = flate2::GzBuilder::new().write(compressed, flate2::Compression::default());
        let uncompressed = self.write_tar(Hashing::new(gzip), mtime)?;
        let (diff_id, unpacked, gzip) = uncompressed.finish();
        let compressed = gzip.finish()?;
        let (digest, size, mut out) = compressed.finish();
        out.flush()?;
        drop(out);
        let final_path = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::rename(&partial, &final_path)?;
        Ok(Layer {
            digest,
            size,
            diff_id,
            unpacked,
        })
    }

    /// Writes the tree as an uncompressed tar into `out`, every entry dated `mtime`; returns
    /// `out`.
    pub fn write_tar<W: Write>(&self, out: W, mtime: u64) -> Result<W> {
        let mut tar = tar::Builder::new(out);
        for (path, node) in &self.entries {
            append(&mut tar, path, node, mtime)
                .with_context(|| format!("cannot write {} into the tar", path.display()))?;
        }
        Ok(tar.into_inner()?)
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &Path, node: &Node, mtime: u64) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(mtime);
    match node {
        Node::Dir(meta) => {
            header.set_entry_type(tar::EntryType::Directory);
            set_meta(&mut header, meta);
            header.set_size(0);
            // A trailing slash marks a directory for every reader.
            let mut name = path.as_os_str().to_owned();
            name.push("/");
            tar.append_data(&mut header, Path::new(&name), std::io::empty())?;
        }
        Node::File(meta, content) => {
            header.set_entry_type(tar::EntryType::Regular);
            set_meta(&mut header, meta);
            match content {
                Content::Bytes(bytes) => {
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, path, bytes.as_slice())?;
                }
                Content::File(host) => {
                    let file = std::fs::File::open(host)
                        .with_context(|| format!("cannot read {}", host.display()))?;
                    header.set_size(file.metadata()?.len());
                    tar.append_data(&mut header, path, file)?;
                }
            }
        }
        Node::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            set_meta(&mut header, &Meta::root(0o777));
            header.set_size(0);
            tar.append_link(&mut header, path, target)?;
        }
    }
    Ok(())
}

fn set_meta(header: &mut tar::Header, meta: &Meta) {
    header.set_mode(meta.mode);
    header.set_uid(meta.uid);
    header.set_gid(meta.gid);
}

/// A writer that counts and hashes (SHA-256) what passes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// `(sha256:<hex>, bytes, inner)`.
    pub fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex(&self.hasher.finalize())),
            self.bytes,
            self.inner,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut tree = Tree::default();
        tree.file(
            "/etc/passwd",
            Meta::root(0o644),
            Content::Bytes(b"root:x:0:0::/root:/sbin/nologin\n".to_vec()),
        );
        tree.dir(
            "/home/nonroot",
            Meta {
                mode: 0o700,
                uid: 65532,
                gid: 65532,
            },
        );
        tree.symlink("/usr/lib/os-release", "../../etc/os-release");
        tree.file(
            &format!("/usr/share/{}", "long-name-".repeat(20)),
            Meta::root(0o644),
            Content::Bytes(vec![]),
        );
        tree
    }

    fn entries(blob: &Path) -> Vec<(String, tar::EntryType, u64, u64, u32)> {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(blob).unwrap());
        let mut archive = tar::Archive::new(gz);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_tree_gives_the_same_layer_and_entries_come_sorted_with_their_parents() {
        let dir = tempdir("same-tree");
        let a = sample().write_layer(&dir.join("a"), 1_700_000_000).unwrap();
        let b = sample().write_layer(&dir.join("b"), 1_700_000_000).unwrap();
        assert_eq!((&a.digest, &a.diff_id), (&b.digest, &b.diff_id));
        let blob = dir.join("a").join(a.digest.trim_start_matches("sha256:"));
        assert_eq!(
            sha256(&std::fs::read(&blob).unwrap()),
            a.digest,
            "named by its digest"
        );
        let listed = entries(&blob);
        let names: Vec<&str> = listed.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            &names[..6],
            [
                "etc/",
                "etc/passwd",
                "home/",
                "home/nonroot/",
                "usr/",
                "usr/lib/"
            ]
        );
        assert!(listed.iter().all(|e| e.3 == 1_700_000_000), "{listed:?}");
        let home = listed.iter().find(|e| e.0 == "home/nonroot/").unwrap();
        assert_eq!((home.2, home.4), (65532, 0o700));
        assert!(names.iter().any(|n| n.ends_with(&"long-name-".repeat(20))));
    }

    #[test]
    fn another_date_gives_another_digest() {
        let dir = tempdir("dates");
        let a = sample().write_layer(&dir, 1).unwrap();
        let b = sample().write_layer(&dir, 2).unwrap();
        assert_ne!(a.diff_id, b.diff_id);
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-tree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
