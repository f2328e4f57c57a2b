//! Showing text that came from someone else: file names, nicknames, chat messages, command
//! output, quoted in a terminal or a log line.
//!
//! Control characters could move the cursor or recolour the screen, and Unicode format
//! characters (general category Cf: the bidirectional overrides and isolates, zero-width
//! characters) and the line and paragraph separators could make one string look like another
//! (`U+202E` turns `exe.txt` around). All of them are shown escaped, as `\u{202e}`, so what is
//! printed is exactly what was sent.

/// Unicode general category Cf (format characters), as of Unicode 15.1: inclusive ranges.
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// Whether `c` is a Unicode format character (category Cf).
pub(crate) fn is_format(c: char) -> bool {
    FORMAT_CHARACTERS
        .binary_search_by(|&(first, last)| {
            if last < c {
                std::cmp::Ordering::Less
            } else if first > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `c` must not reach a terminal as it is: a control character, a format character,
/// or the line or paragraph separator.
pub(crate) fn is_unsafe(c: char) -> bool {
    c.is_control() || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Text with every character `is_unsafe` flags escaped, safe to print in a terminal or a log.
pub fn escape(text: &str) -> String {
    escape_except(text, &[])
}

/// [`escape`], leaving the characters in `kept` as they are (tabs in command output).
pub fn escape_except(text: &str, kept: &[char]) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unsafe(c) && !kept.contains(&c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// [`escape`] of at most the first `max_chars` characters, with `…` if more were cut: for
/// quoting a peer's text in a reply, which must stay small however long the text was.
pub(crate) fn escape_at_most(text: &str, max_chars: usize) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max_chars).collect();
    let cut = if chars.next().is_some() { "…" } else { "" };
    format!("{}{cut}", escape(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_disjoint() {
        for pair in FORMAT_CHARACTERS.windows(2) {
            let [(first, last), (next, _)] = pair else {
                unreachable!()
            };
            assert!(first <= last && last < next, "{pair:?}");
        }
    }

    #[test]
    fn format_characters_are_found_at_the_edges_of_each_range() {
        for &(first, last) in FORMAT_CHARACTERS {
            assert!(is_format(first) && is_format(last), "{first:?}..{last:?}");
        }
        for c in [
            'a',
            'é',
            '金',
            '\u{2065}',
            '\u{202F}',
            '\u{1F600}',
            '\u{E0000}',
            '\u{E0080}',
        ] {
            assert!(!is_format(c), "{c:?}");
        }
    }

    #[test]
    fn bidi_overrides_separators_and_controls_are_escaped() {
        assert_eq!(escape("evil\u{202E}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
        assert_eq!(escape("zero\u{200B}width\u{FEFF}"), "zero\\u{200b}width\\u{feff}");
        assert_eq!(escape("\u{1b}[2J\n"), "\\u{1b}[2J\\n");
        assert_eq!(escape("\u{2066}isolate\u{2069}"), "\\u{2066}isolate\\u{2069}");
        assert_eq!(escape("tag\u{E0041}"), "tag\\u{e0041}");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for text in ["hello", "金老板 说: 你好", "naïve café", "emoji 😀", "a\"b\\c"] {
            assert_eq!(escape(text), text);
        }
    }

    #[test]
    fn tabs_can_be_kept_and_long_text_is_cut() {
        assert_eq!(escape_except("a\tb\u{202E}", &['\t']), "a\tb\\u{202e}");
        assert_eq!(escape("a\tb"), "a\\tb");
        assert_eq!(escape_at_most("abcdef", 3), "abc…");
        assert_eq!(escape_at_most("\u{202E}b", 5), "\\u{202e}b");
    }
}
