//! Embeds the built web client and dashboard (`web/dist/www`, made by
//! `make web`: `npm ci && npm run build` in `web/`) into the gateway.
//!
//! Writes `$OUT_DIR/web_assets.rs`: a table of `(path, bytes)` with one
//! `include_bytes!` per file. Without `web/dist/www` (node not installed,
//! assets never built) the table is empty and `/app/` answers with a page
//! saying how to build them; `cargo build` never needs node.
//!
//! `web/dist/` itself is in git (a `.gitkeep`), so watching it always works:
//! a watched path that does not exist would rerun this script, and rebuild
//! the crate, on every build.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Files larger than this are not embedded: the assets are a few hundred
/// KiB, so anything bigger is a mistake that would bloat the binary.
const FILE_BYTES_MAX: u64 = 8 * 1024 * 1024;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dist = manifest.join("../web/dist");
    let www = dist.join("www");
    if dist.is_dir() {
        println!("cargo:rerun-if-changed={}", dist.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    if www.is_dir() {
        collect(&www, &www, &mut files);
    }
    files.sort();
    let mut out = String::from("/// Embedded web assets: (path under `/`, bytes).\n");
    out.push_str("pub(crate) static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        let _ = writeln!(out, "    ({rel:?}, include_bytes!({abs:?})),");
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(e) = std::fs::write(out_dir.join("web_assets.rs"), out) {
        panic!("cannot write web_assets.rs: {e}");
    }
}

/// Every regular file under `dir` as (path relative to `root` with `/`
/// separators, absolute path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            collect(root, &path, files);
        } else if meta.is_file() && meta.len() <= FILE_BYTES_MAX {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
            let abs = path.canonicalize().unwrap_or(path.clone());
            files.push((rel.join("/"), abs.to_string_lossy().into_owned()));
        }
    }
}
