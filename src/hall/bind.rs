//! Binding a bidder's certificates by its phone (扫码绑定).
//!
//! On a platform that trusts CAs (`trusted_cas`), the agent may register a bidder by its unified
//! social credit code and name alone, and give it a bind code (a link, or its QR code). The
//! bidder's phone scans it and sends its signing and encryption certificates, signing the code
//! and both certificates' SM3 with the signing certificate's key. The hall takes them if a
//! trusted CA issued both to this enterprise, each fit for its use and valid now, and the
//! signature verifies: what binds a certificate to the bidder is the CA's word and the key's
//! holder, not the code, which only names the opening and the bidder.
//!
//! Both certificates must carry the enterprise's unified social credit code (its name is not
//! enough here, where no agent looks). The code is `{opening}.{uscc}.{mac}` (HMAC-SM3 under a
//! key of the master key): nothing is stored for it, and no one learns from the hall which
//! enterprises registered by trying codes. A bidder binds once, while bids can be uploaded
//! (before the deadline and before decryption starts): one that has certificates, registered or
//! bound, is refused, so a code that got about binds nothing more.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{Hall, HallError, ev, on_rayon, signed_by_any};
use crate::crypto;
use crate::db::{BidderRow, Bound};
use crate::domain::Uscc;
use crate::phone::{Bind, BindView, bind_message};

/// What the hall's MAC of a bind code is made for.
const CODE_MAC: &str = "bind code v1";

/// A bind code, for the agent to hand to the bidder.
#[derive(Debug, serde::Serialize)]
pub struct BindCode {
    pub code: String,
    /// What the QR code holds: where the phone fetches the [`BindView`].
    pub url: String,
}

fn unusable_code() -> HallError {
    HallError::WrongState(
        "this bind code can no longer be used: the opening no longer takes bids".into(),
    )
}

fn has_keys() -> HallError {
    HallError::WrongState(
        "this bidder has certificates or keys already (registered or bound before): to add or renew \
         one, ask the tender agent"
            .into(),
    )
}

impl Hall {
    fn bind_mac(&self, opening_id: &str, uscc: &str) -> String {
        let message = format!("{opening_id}\0{uscc}");
        hex::encode(&self.inner.vault.mac(CODE_MAC, message.as_bytes())[..16])
    }

    fn bind_url(&self, code: &str) -> String {
        format!("{}/api/phone/binds/{code}", self.public_url())
    }

    /// The bind code of bidder `uscc` of opening `opening_id` (the agent's).
    pub async fn bind_code(&self, opening_id: &str, uscc: &str) -> Result<BindCode, HallError> {
        if self.inner.trust.is_none() {
            return Err(HallError::WrongState(
                "binding by phone needs the CAs this platform trusts (the trusted_cas setting): \
                 without them anyone could bind a certificate they made themselves; register \
                 the bidder's certificates instead"
                    .into(),
            ));
        }
        let opening = self.opening(opening_id).await?;
        if opening.state != "scheduled" || self.now() >= opening.deadline_ms {
            return Err(HallError::WrongState(
                "bind codes are given only while the opening takes bids (before its deadline)"
                    .into(),
            ));
        }
        let uscc = Uscc::parse(uscc).map_err(|e| HallError::Invalid(e.to_string()))?;
        let bidder = self.bidder_coded(&opening.id, uscc.as_str()).await?;
        if self.key_count(&bidder.id).await? > 0 {
            return Err(HallError::WrongState(
                "this bidder has certificates or keys already, so its phone cannot bind any: add or renew \
                 them with 补充或更新证书 instead"
                    .into(),
            ));
        }
        let code = format!(
            "{}.{}.{}",
            opening.id,
            bidder.uscc,
            self.bind_mac(&opening.id, &bidder.uscc)
        );
        Ok(BindCode {
            url: self.bind_url(&code),
            code,
        })
    }

    /// How many keys of either use bidder `bidder_id` has.
    async fn key_count(&self, bidder_id: &str) -> Result<usize, HallError> {
        Ok(self.inner.db.bidder_keys(bidder_id, "sign").await?.len()
            + self.inner.db.bidder_keys(bidder_id, "enc").await?.len())
    }

    /// The bidder bind code `code` is of, while certificates can be bound with it.
    async fn bind_target(&self, code: &str) -> Result<(BindView, BidderRow), HallError> {
        let mut parts = code.split('.');
        let unknown = || HallError::NotFound("bind code");
        let (Some(opening_id), Some(uscc), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unknown());
        };
        let expected = self.bind_mac(opening_id, uscc);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) || self.inner.trust.is_none() {
            return Err(unknown());
        }
        let opening = self.opening(opening_id).await?;
        if opening.state != "scheduled" || self.now() >= opening.deadline_ms {
            return Err(unusable_code());
        }
        let bidder = self
            .inner
            .db
            .bidder_by_uscc(opening_id, uscc)
            .await?
            .ok_or_else(unknown)?;
        if self.key_count(&bidder.id).await? > 0 {
            return Err(has_keys());
        }
        let view = BindView {
            opening_id: opening.id,
            tender_id: opening.tender_id,
            tender_name: opening.name,
            bidder: bidder.uscc.clone(),
            bidder_name: bidder.name.clone(),
            answer_url: self.bind_url(code),
            code: code.to_owned(),
        };
        Ok((view, bidder))
    }

    /// What the phone is shown when it scans bind code `code`.
    pub async fn bind_view(&self, code: &str) -> Result<BindView, HallError> {
        Ok(self.bind_target(code).await?.0)
    }

    /// Binds the phone's certificates to the bidder of `code`, which has none yet.
    pub async fn bind(&self, code: &str, bind: &Bind) -> Result<serde_json::Value, HallError> {
        let (_, bidder) = self.bind_target(code).await?;
        // Bound without the agent looking: the code must be in the certificates, the name is
        // not enough.
        for (what, pem) in [("signing", &bind.sign_cert), ("encryption", &bind.enc_cert)] {
            let identity = crypto::load_public_pem(pem)
                .map_err(|e| HallError::Invalid(format!("the {what} certificate: {e}")))?;
            if !identity.carries_code(&bidder.uscc) {
                return Err(HallError::Invalid(format!(
                    "the {what} certificate ({}) does not carry the unified social credit code \
                     {} (证书与投标人不符): bind the certificates the CA issued to this enterprise",
                    identity.describe(),
                    bidder.uscc
                )));
            }
        }
        let keys = self
            .checked_keys(
                &bidder,
                std::slice::from_ref(&bind.sign_cert),
                std::slice::from_ref(&bind.enc_cert),
            )
            .await?;
        let (Some(sign), Some(enc)) = (
            keys.iter().find(|k| k.usage == "sign").cloned(),
            keys.iter().find(|k| k.usage == "enc").cloned(),
        ) else {
            return Err(HallError::Invalid(
                "send one signing and one encryption certificate".into(),
            ));
        };
        let message = bind_message(code, &sign.der, &enc.der);
        let signature = B64
            .decode(bind.signature.trim())
            .map_err(|_| HallError::Invalid("the signature is not base64".into()))?;
        let signer = vec![sign.clone()];
        if !on_rayon(move || signed_by_any(&signer, &message, &signature)).await? {
            return Err(HallError::Invalid(
                "the signature is not made with the key of the signing certificate being bound, \
                 over this bind code and these certificates: sign with that certificate's key"
                    .into(),
            ));
        }
        let bound = ev(
            "bidder.bound",
            "agent",
            json!({"uscc": bidder.uscc, "name": bidder.name,
                   "certificates": super::key_evidence(&keys)}),
        );
        match self
            .inner
            .db
            .bind_bidder_keys(
                &bidder.opening_id,
                &bidder.id,
                &keys,
                vec![bound],
                self.now(),
            )
            .await?
        {
            Bound::Staged(staged) => self.publish(staged).await,
            Bound::HasKeys => return Err(has_keys()),
            Bound::Closed => return Err(unusable_code()),
        }
        self.count_bidder_action("bind");
        Ok(
            json!({"status": "bound", "bidder": {"uscc": bidder.uscc, "name": bidder.name},
                  "sign_key_id": sign.key_id, "enc_key_id": enc.key_id}),
        )
    }
}
