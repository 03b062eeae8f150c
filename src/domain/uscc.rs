//! The unified social credit code (统一社会信用代码), GB 32100-2015.

use std::fmt;

/// The 31 characters a code may use: digits and capital letters without I, O, Z, S and V.
const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
/// Weights of the first 17 characters in the check-digit sum (3^i mod 31).
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// Why a string is not a unified social credit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsccError {
    #[error("a unified social credit code has 18 characters, this one has {0}")]
    Length(usize),
    #[error(
        "character {position} ('{character}') is not allowed in a unified social credit code (digits and capital letters except I, O, Z, S, V)"
    )]
    Character { position: usize, character: char },
    #[error(
        "the check digit of this unified social credit code is wrong: expected '{expected}', found '{found}'; check the code for a typing mistake"
    )]
    CheckDigit { expected: char, found: char },
}

/// A unified social credit code whose characters and check digit have been validated.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Uscc(String);

impl Uscc {
    /// Parses a code, accepting surrounding white space and lower-case letters.
    pub fn parse(input: &str) -> Result<Self, UsccError> {
        let code = input.trim().to_ascii_uppercase();
        let chars: Vec<char> = code.chars().collect();
        if chars.len() != 18 {
            return Err(UsccError::Length(chars.len()));
        }
        let mut sum = 0u32;
        for (position, &character) in chars.iter().enumerate() {
            let value = char_value(character).ok_or(UsccError::Character {
                position: position + 1,
                character,
            })?;
            if let Some(weight) = WEIGHTS.get(position) {
                sum += value * weight;
            }
        }
        let expected = check_char(sum);
        if chars[17] != expected {
            return Err(UsccError::CheckDigit {
                expected,
                found: chars[17],
            });
        }
        Ok(Self(code))
    }

    /// Completes a 17-character prefix with its check digit (for tests, demos and tooling).
    pub fn with_check_digit(prefix17: &str) -> Result<Self, UsccError> {
        let prefix = prefix17.trim().to_ascii_uppercase();
        let mut sum = 0u32;
        for (position, character) in prefix.chars().enumerate() {
            let value = char_value(character).ok_or(UsccError::Character {
                position: position + 1,
                character,
            })?;
            sum += value
                * WEIGHTS
                    .get(position)
                    .ok_or(UsccError::Length(position + 2))?;
        }
        if prefix.chars().count() != 17 {
            return Err(UsccError::Length(prefix.chars().count() + 1));
        }
        Self::parse(&format!("{prefix}{}", check_char(sum)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn char_value(c: char) -> Option<u32> {
    let byte = u8::try_from(c).ok()?;
    ALPHABET.iter().position(|&a| a == byte).map(|p| p as u32)
}

fn check_char(sum: u32) -> char {
    let check = (31 - sum % 31) % 31;
    char::from(ALPHABET[check as usize])
}

impl fmt::Display for Uscc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uscc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uscc({})", self.0)
    }
}

impl TryFrom<String> for Uscc {
    type Error = UsccError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Uscc> for String {
    fn from(value: Uscc) -> Self {
        value.0
    }
}

impl std::str::FromStr for Uscc {
    type Err = UsccError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_published_codes() {
        // Codes printed on real business licences.
        for code in [
            "91350100M000100Y43",
            "911100001000094165",
            "91110000802100433B",
        ] {
            assert!(Uscc::parse(code).is_ok(), "{code}");
        }
    }

    #[test]
    fn rejects_each_kind_of_error() {
        assert_eq!(Uscc::parse("9135010"), Err(UsccError::Length(7)));
        assert!(matches!(
            Uscc::parse("91350100M00010OY43"),
            Err(UsccError::Character { position: 15, .. })
        ));
        assert!(matches!(
            Uscc::parse("91350100M000100Y44"),
            Err(UsccError::CheckDigit {
                expected: '3',
                found: '4'
            })
        ));
    }

    #[test]
    fn completes_a_prefix() {
        let code = Uscc::with_check_digit("91350100M000100Y4").unwrap();
        assert_eq!(code.as_str(), "91350100M000100Y43");
    }
}
