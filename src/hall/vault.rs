//! The server's key-encryption key: hall private keys are stored only sealed under it.
//!
//! The key lives in `master_key_file` (by default `<data_dir>/master.key`; created at first start,
//! mode 0600) so that a server restarted mid-opening can still open the keys the phones re-wrapped
//! to its hall key. Keep that file on protected storage; whoever holds it and the database can
//! open accepted answers. A missing file is never replaced while openings still need the old key.

use std::io::Write;
use std::path::Path;

use sm2::SecretKey;
use zeroize::Zeroizing;

use super::HallError;
use crate::crypto::{self, Sm4Gcm};

pub struct Vault {
    cipher: Sm4Gcm,
    /// The platform's signing key (see [`Vault::platform_key`]).
    platform: SecretKey,
    /// The key of the hall's message authentication codes (see [`Vault::mac`]).
    mac_key: Zeroizing<[u8; 32]>,
}

/// What the platform's signing key is derived for (see [`crypto::derive_secret_key`]).
const PLATFORM_KEY_PURPOSE: &str = "kaibiao platform signing key v1";

/// What the hall's MAC key is derived for.
const MAC_KEY_PURPOSE: &[u8] = b"kaibiao hall mac key v1";

impl Vault {
    /// Reads the key at `path`, or creates it there when it does not exist and no opening
    /// (`sealed_openings` of them) holds a hall key sealed under an earlier one. The folder is
    /// made if `make_folder` (the default place in the data folder); a folder named in the
    /// settings must exist (a secrets mount that is not up must not get a key on the local disk).
    pub fn open_or_create(
        path: &Path,
        sealed_openings: i64,
        make_folder: bool,
    ) -> Result<Self, HallError> {
        let invalid = || {
            HallError::Setup(format!(
                "{} is not a master key (32 hex digits): restore the file the server created",
                path.display()
            ))
        };
        let exists = path
            .try_exists()
            .map_err(HallError::io(format!("looking for {}", path.display())))?;
        let key: Zeroizing<[u8; 16]> = if exists {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(HallError::io(format!("reading {}", path.display())))?,
            );
            let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| invalid())?);
            Zeroizing::new(bytes.as_slice().try_into().map_err(|_| invalid())?)
        } else if sealed_openings > 0 {
            return Err(HallError::Setup(format!(
                "the master key {} is missing, but {sealed_openings} opening(s) being decrypted \
                 hold keys sealed under it: restore the file from its backup (or set \
                 master_key_file to where it is); a new key would leave their accepted answers \
                 unreadable",
                path.display()
            )));
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let folder = crate::engine::parent_of(path);
            if make_folder {
                std::fs::create_dir_all(folder)
                    .map_err(HallError::io(format!("creating {}", folder.display())))?;
            } else if !folder.is_dir() {
                return Err(HallError::Setup(format!(
                    "the folder of master_key_file, {}, does not exist: mount or create it",
                    folder.display()
                )));
            }
            let key = Zeroizing::new(
                crypto::random_bytes::<16>().map_err(|e| HallError::Internal(e.to_string()))?,
            );
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(HallError::io(format!("creating {}", path.display())))?;
            file.write_all(hex::encode(*key).as_bytes())
                .and_then(|_| file.sync_all())
                .and_then(|_| crate::engine::sync_dir(folder))
                .map_err(HallError::io(format!("writing {}", path.display())))?;
            key
        };
        Ok(Self {
            cipher: Sm4Gcm::new(&key),
            platform: crypto::derive_secret_key(key.as_slice(), PLATFORM_KEY_PURPOSE),
            mac_key: Zeroizing::new(crypto::hmac_sm3(key.as_slice(), MAC_KEY_PURPOSE)),
        })
    }

    /// The SM2 key the platform signs its receipts and log heads with. It is derived from the
    /// master key, so it stays the same across restarts and needs no file of its own; whoever
    /// holds the master key can sign as the platform.
    pub fn platform_key(&self) -> &SecretKey {
        &self.platform
    }

    /// HMAC-SM3 of `message` for `context` under a key derived from the master key: what the
    /// hall hands out and must recognise later without storing it (login codes).
    pub fn mac(&self, context: &str, message: &[u8]) -> [u8; 32] {
        let mut input = Vec::with_capacity(context.len() + 1 + message.len());
        input.extend_from_slice(context.as_bytes());
        input.push(0);
        input.extend_from_slice(message);
        crypto::hmac_sm3(self.mac_key.as_slice(), &input)
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
                    "a sealed secret does not open with the master key (was master_key_file replaced?)".into(),
                )
            },
        )?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_where_it_is_told_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("master.key");
        let Err(error) = Vault::open_or_create(&path, 0, false) else {
            panic!("a key made in a folder that is not there");
        };
        assert!(error.to_string().contains("mount or create it"), "{error}");
        let sealed = Vault::open_or_create(&path, 0, true)
            .unwrap()
            .seal("hall:x", b"secret")
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Vault::open_or_create(&path, 1, false).unwrap();
        assert_eq!(again.open("hall:x", &sealed).unwrap().as_slice(), b"secret");
        assert!(
            again.open("hall:y", &sealed).is_err(),
            "bound to its context"
        );
    }

    #[test]
    fn a_missing_key_is_not_replaced_while_openings_need_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let Err(error) = Vault::open_or_create(&path, 2, true) else {
            panic!("a new key was made");
        };
        let said = error.to_string();
        assert!(
            said.contains(&path.display().to_string()) && said.contains("restore"),
            "{said}"
        );
        assert!(!path.exists(), "nothing created");
    }

    #[test]
    fn a_damaged_key_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, "not hex").unwrap();
        let Err(error) = Vault::open_or_create(&path, 0, true) else {
            panic!("a damaged key was taken");
        };
        assert!(error.to_string().contains("is not a master key"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not hex");
    }
}
