//! Transcript search keys: what each speaker said, and the grams that index it.
//!
//! The transcript filter of ListCalls finds calls in which a speaker said a substring. Text is
//! normalised (lower-cased) the same way on both sides; the index keys are hashes of every 1- and
//! 2-character gram of each turn, salted with the tenant (see the migration
//! `20261123000001_call_search.sql` for why not trigrams). A needle of one character is looked up
//! by its own gram, a longer one by all its 2-character grams; the database then confirms the
//! exact substring, so hash collisions cost a recheck and never a wrong answer.

use std::collections::BTreeMap;

use crate::domain::TenantId;
use crate::domain::call::Turn;
use crate::proto::Speaker;

/// The longest needle the filter accepts, in characters.
pub const MAX_NEEDLE_CHARS: usize = 64;

/// What one speaker said in a call: the normalised lines and their gram keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerTranscript {
    pub speaker: Speaker,
    /// The speaker's turns in order, normalised, one per line.
    pub text: String,
    /// Distinct gram keys of every line, sorted.
    pub grams: Vec<i32>,
}

/// The normalised form searches compare: lower case.
pub fn normalize(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    // Most of a Chinese dialogue: ASCII and CJK characters without case need no table lookup.
    // Anything else goes the general way (which also knows a word-final sigma).
    if !text
        .chars()
        .all(|character| character.is_ascii() || is_caseless_cjk(character))
    {
        return text.to_lowercase();
    }
    text.chars()
        .map(|character| character.to_ascii_lowercase())
        .collect()
}

/// CJK symbols and punctuation, kana, and the unified ideographs (U+3000 to U+9FFF): no
/// character there has a lower-case mapping (a unit test checks every one).
pub fn is_caseless_cjk(character: char) -> bool {
    ('\u{3000}'..='\u{9FFF}').contains(&character)
}

/// The transcripts of a dialogue, one per speaker that said something, in speaker order.
pub fn transcripts(tenant: &TenantId, turns: &[Turn]) -> Vec<SpeakerTranscript> {
    let mut by_speaker: BTreeMap<i32, (Vec<String>, Vec<i32>)> = BTreeMap::new();
    for turn in turns {
        let line = normalize(&turn.text).replace(['\n', '\r'], " ");
        if line.trim().is_empty() {
            continue;
        }
        let (lines, grams) = by_speaker.entry(turn.speaker as i32).or_default();
        add_grams(tenant, &line, grams);
        lines.push(line);
    }
    by_speaker
        .into_iter()
        .map(|(speaker, (lines, mut grams))| {
            grams.sort_unstable();
            grams.dedup();
            SpeakerTranscript {
                speaker: Speaker::try_from(speaker).unwrap_or(Speaker::Unspecified),
                text: lines.join("\n"),
                grams,
            }
        })
        .collect()
}

/// A validated needle: normalised, 1..=[`MAX_NEEDLE_CHARS`] characters, one line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Needle(String);

impl Needle {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("is required: the text to look for".to_owned());
        }
        if text.contains(['\n', '\r']) {
            return Err("must be one line".to_owned());
        }
        if text.chars().count() > MAX_NEEDLE_CHARS {
            return Err(format!("must be at most {MAX_NEEDLE_CHARS} characters"));
        }
        if text.contains('\0') {
            return Err("must not contain NUL characters".to_owned());
        }
        Ok(Self(normalize(text)))
    }

    /// The normalised text, as the database compares it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The gram keys every matching transcript contains: the needle's own gram when it is one
    /// character, else each of its 2-character grams.
    pub fn grams(&self, tenant: &TenantId) -> Vec<i32> {
        let chars: Vec<char> = self.0.chars().collect();
        let mut grams: Vec<i32> = if chars.len() == 1 {
            vec![gram_key(tenant, &chars)]
        } else {
            chars
                .windows(2)
                .map(|pair| gram_key(tenant, pair))
                .collect()
        };
        grams.sort_unstable();
        grams.dedup();
        grams
    }
}

fn add_grams(tenant: &TenantId, line: &str, grams: &mut Vec<i32>) {
    let chars: Vec<char> = line.chars().collect();
    for (index, &char) in chars.iter().enumerate() {
        grams.push(gram_key(tenant, &[char]));
        if let Some(&next) = chars.get(index + 1) {
            grams.push(gram_key(tenant, &[char, next]));
        }
    }
}

/// 32-bit FNV-1a of the tenant id, a separator and the gram's UTF-8 bytes. A fixed,
/// documented function: the stored keys depend on it, so it must never change.
fn gram_key(tenant: &TenantId, gram: &[char]) -> i32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut hash = OFFSET;
    let mut feed = |byte: u8| {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(PRIME);
    };
    tenant.as_str().bytes().for_each(&mut feed);
    feed(0xff);
    let mut buffer = [0; 4];
    for char in gram {
        char.encode_utf8(&mut buffer).bytes().for_each(&mut feed);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {

    #[test]
    fn normalize_lowers_like_to_lowercase_and_skips_only_caseless_characters() {
        for code in 0x3000..=0x9FFF_u32 {
            if let Some(character) = char::from_u32(code) {
                assert!(is_caseless_cjk(character));
                assert_eq!(
                    character.to_lowercase().collect::<String>(),
                    character.to_string(),
                    "U+{code:04X} has a lower case"
                );
            }
        }
        for text in [
            "ABC 不需要 ÄÖÜ ΣΑΣ Ａｂ İ",
            "plain ascii TEXT",
            "",
            "全角ＡＢＣ，好的。",
        ] {
            assert_eq!(normalize(text), text.to_lowercase(), "{text}");
        }
    }

    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    fn turn(speaker: Speaker, text: &str) -> Turn {
        Turn {
            speaker,
            text: text.to_owned(),
            ..Turn::default()
        }
    }

    #[test]
    fn each_speaker_gets_its_lines_in_order() {
        let turns = [
            turn(Speaker::Robot, "您好，请问是王先生吗？"),
            turn(Speaker::Customer, "是的"),
            turn(Speaker::Robot, "OK 好的"),
            turn(Speaker::Customer, "  "),
        ];
        let found = transcripts(&tenant("acme"), &turns);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].speaker, Speaker::Robot);
        assert_eq!(found[0].text, "您好，请问是王先生吗？\nok 好的");
        assert_eq!(found[1].speaker, Speaker::Customer);
        assert_eq!(found[1].text, "是的");
    }

    #[test]
    fn every_substring_needle_finds_its_grams_in_the_transcript() {
        let acme = tenant("acme");
        let found = transcripts(&acme, &[turn(Speaker::Customer, "我不需要贷款，谢谢")]);
        let grams = &found[0].grams;
        for needle in ["不", "不需", "需要贷款", "我不需要贷款，谢谢", "谢"] {
            let needle = Needle::parse(needle).unwrap();
            for gram in needle.grams(&acme) {
                assert!(grams.binary_search(&gram).is_ok(), "{needle:?}");
            }
        }
    }

    #[test]
    fn grams_do_not_span_lines_and_differ_by_tenant() {
        let acme = tenant("acme");
        let found = transcripts(
            &acme,
            &[turn(Speaker::Robot, "你好"), turn(Speaker::Robot, "再见")],
        );
        let across = Needle::parse("好再").unwrap().grams(&acme);
        assert!(found[0].grams.binary_search(&across[0]).is_err());
        let other = Needle::parse("你好").unwrap().grams(&tenant("other"));
        assert!(found[0].grams.binary_search(&other[0]).is_err());
    }

    #[test]
    fn needles_are_normalised_and_bounded() {
        assert_eq!(Needle::parse("OK").unwrap().as_str(), "ok");
        assert!(Needle::parse("").is_err());
        assert!(Needle::parse(" ").is_err());
        assert!(Needle::parse("a\nb").is_err());
        assert!(Needle::parse(&"字".repeat(MAX_NEEDLE_CHARS + 1)).is_err());
        assert!(Needle::parse(&"字".repeat(MAX_NEEDLE_CHARS)).is_ok());
    }

    #[test]
    fn the_gram_function_is_stable() {
        // Stored keys depend on these exact values.
        let acme = tenant("acme");
        assert_eq!(gram_key(&acme, &['a']), gram_key(&acme, &['a']));
        assert_eq!(gram_key(&acme, &['好']), 0x379b_3119);
    }
}
