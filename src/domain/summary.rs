//! The bid summary (开标一览表): what is read aloud at the opening.

use std::collections::BTreeMap;

/// Why a bid summary is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("the bid summary is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("the bid summary is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the bid summary needs a bidder name")]
    EmptyName,
    #[error("the bid summary is {0} bytes; at most {max} are allowed", max = BidSummary::MAX_ENCODED)]
    TooLarge(usize),
}

/// The bid summary sealed beside the bid body so that it can be shown the moment the key arrives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BidSummary {
    /// The bidder's name as read aloud (投标人名称).
    pub bidder_name: String,
    /// The bid price in fen (分), an integer so that no rounding ever happens.
    pub price_fen: u64,
    /// Duration (工期) in calendar days.
    pub duration_days: u32,
    /// Quality commitment (质量标准).
    pub quality: String,
    /// Any further named fields the tender asks for, in a stable order.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl BidSummary {
    /// The largest encoded summary a container may hold.
    pub const MAX_ENCODED: usize = 64 * 1024;

    pub fn from_toml(text: &str) -> Result<Self, SummaryError> {
        let summary: Self = toml::from_str(text)?;
        summary.validate()
    }

    /// Decodes the canonical form stored inside a container.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self, SummaryError> {
        let summary: Self = serde_json::from_slice(bytes)?;
        summary.validate()
    }

    /// The canonical form stored inside a container: compact JSON, fields in declaration order.
    pub fn to_canonical(&self) -> Result<Vec<u8>, SummaryError> {
        let bytes = serde_json::to_vec(self)?;
        if bytes.len() > Self::MAX_ENCODED {
            return Err(SummaryError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// The price as yuan with two decimals, e.g. `1234567.89`.
    pub fn price_yuan(&self) -> String {
        format!("{}.{:02}", self.price_fen / 100, self.price_fen % 100)
    }

    fn validate(self) -> Result<Self, SummaryError> {
        if self.bidder_name.trim().is_empty() {
            return Err(SummaryError::EmptyName);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_and_round_trips() {
        let summary = BidSummary::from_toml(
            "bidder_name = \"某建设工程有限公司\"\nprice_fen = 123456789\nduration_days = 180\nquality = \"合格\"\n[fields]\n\"项目经理\" = \"张三\"\n",
        )
        .unwrap();
        assert_eq!(summary.price_yuan(), "1234567.89");
        let back = BidSummary::from_canonical(&summary.to_canonical().unwrap()).unwrap();
        assert_eq!(back, summary);
    }

    #[test]
    fn refuses_unknown_and_missing_fields() {
        assert!(BidSummary::from_toml("bidder_name = \"x\"").is_err());
        assert!(matches!(
            BidSummary::from_toml(
                "bidder_name = \" \"\nprice_fen = 1\nduration_days = 1\nquality = \"q\""
            ),
            Err(SummaryError::EmptyName)
        ));
    }
}
