//! The bid folder as a tar archive: packing for sealing, unpacking after unsealing.

use std::fs::File;
use std::path::Path;

use crate::format::BidError;

/// Packs the folder `dir` into a tar archive written to `out`.
pub fn pack_dir(dir: &Path, out: &File) -> Result<(), BidError> {
    if !dir.is_dir() {
        return Err(BidError::Io {
            context: format!("the bid folder {} cannot be read", dir.display()),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
        });
    }
    let mut builder = tar::Builder::new(std::io::BufWriter::new(out));
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .map_err(BidError::io(format!(
            "packing the bid folder {}",
            dir.display()
        )))?;
    builder
        .into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(BidError::io("writing the bid archive"))?;
    Ok(())
}

/// Unpacks a tar archive into `dir`; entries that would escape `dir` are refused by `tar`.
pub fn unpack_archive(archive: &File, dir: &Path) -> Result<(), BidError> {
    let mut archive = tar::Archive::new(std::io::BufReader::new(archive));
    archive.set_preserve_permissions(false);
    archive.unpack(dir).map_err(BidError::io(format!(
        "unpacking the bid into {}",
        dir.display()
    )))
}
