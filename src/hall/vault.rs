//! The server's key-encryption key: hall private keys are stored only sealed under it.
//!
//! The key lives in `<data_dir>/master.key` (created at first start, mode 0600) so that a server
//! restarted mid-opening can still open the keys the phones re-wrapped to its hall key. Keep that
//! file on protected storage; whoever holds it and the database can open accepted answers.

use std::io::Write;
use std::path::Path;

use zeroize::Zeroizing;

use super::HallError;
use crate::crypto::{self, Sm4Gcm};

pub struct Vault {
    cipher: Sm4Gcm,
}

impl Vault {
    pub fn open_or_create(data_dir: &Path) -> Result<Self, HallError> {
        let path = data_dir.join("master.key");
        let key: Zeroizing<[u8; 16]> = if path.exists() {
            let text = Zeroizing::new(
                std::fs::read_to_string(&path).map_err(HallError::io("reading master.key"))?,
            );
            let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
                HallError::Internal(format!("{} is not 32 hex digits", path.display()))
            })?);
            Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
                HallError::Internal(format!("{} is not 32 hex digits", path.display()))
            })?)
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(data_dir).map_err(HallError::io("creating the data folder"))?;
            let key = Zeroizing::new(
                crypto::random_bytes::<16>().map_err(|e| HallError::Internal(e.to_string()))?,
            );
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(HallError::io("creating master.key"))?;
            file.write_all(hex::encode(*key).as_bytes())
                .and_then(|_| file.sync_all())
                .and_then(|_| crate::engine::sync_dir(data_dir))
                .map_err(HallError::io("writing master.key"))?;
            key
        };
        Ok(Self {
            cipher: Sm4Gcm::new(&key),
        })
    }

    /// `nonce ‖ ciphertext ‖ tag`, bound to `context`.
    pub fn seal(&self, context: &str, secret: &[u8]) -> Result<Vec<u8>, HallError> {
        let nonce: [u8; 12] =
            crypto::random_bytes().map_err(|e| HallError::Internal(e.to_string()))?;
        let mut buf = secret.to_vec();
        let tag = crypto::seal_in_place(&self.cipher, &nonce, context.as_bytes(), &mut buf);
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, HallError> {
        if sealed.len() < 28 {
            return Err(HallError::Internal("a sealed secret is too short".into()));
        }
        let nonce: [u8; 12] = sealed[..12].try_into().expect("12 bytes");
        let (body, tag) = sealed[12..].split_at(sealed.len() - 28);
        let mut buf = Zeroizing::new(body.to_vec());
        crypto::open_in_place(&self.cipher, &nonce, context.as_bytes(), &mut buf, tag).map_err(
            |_| {
                HallError::Internal(
                    "a sealed secret does not open with master.key (was the file replaced?)".into(),
                )
            },
        )?;
        Ok(buf)
    }
}
