//! Turns the bytes a user types into a TTY into the command lines they entered, for audit.
//!
//! Best effort by design: the shell owns the real line editor (history, completion), so a
//! line that used history recall or tab completion is marked `uncertain`. What is modelled:
//! printable text (UTF-8) inserted at a cursor, backspace (DEL and ^H), ^U (kill line), ^W
//! (kill word), ^C (discard line), ^D, CR/LF (end of line, CRLF counts once), left/right/
//! home/end/delete escape sequences, and CSI/SS3 sequences that are skipped (bracketed paste
//! markers, function keys).

/// One line the user submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    pub text: String,
    /// History recall (up/down) or tab completion was used: the shell may have run a
    /// different text than `text`.
    pub uncertain: bool,
}

/// Longest line kept; longer input is truncated (and marked uncertain) to bound memory.
pub const MAX_LINE_CHARS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    None,
    /// Saw ESC.
    Start,
    /// Inside `ESC [` collecting parameter bytes.
    Csi,
    /// Saw `ESC O`: one more byte.
    Ss3,
}

/// The assembler state for one TTY input stream.
#[derive(Debug)]
pub struct LineAssembler {
    line: Vec<char>,
    cursor: usize,
    uncertain: bool,
    escape: Escape,
    csi_params: String,
    utf8: Vec<u8>,
    last_was_cr: bool,
}

impl Default for LineAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl LineAssembler {
    pub fn new() -> Self {
        LineAssembler {
            line: Vec::new(),
            cursor: 0,
            uncertain: false,
            escape: Escape::None,
            csi_params: String::new(),
            utf8: Vec::new(),
            last_was_cr: false,
        }
    }

    /// Feeds bytes; returns the lines completed by them (empty lines are not reported).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<CommandLine> {
        let mut out = Vec::new();
        for &b in bytes {
            if let Some(line) = self.byte(b) {
                out.push(line);
            }
        }
        out
    }

    /// The partial line typed so far (for an audit record at session end).
    pub fn pending(&self) -> Option<CommandLine> {
        if self.line.is_empty() {
            None
        } else {
            Some(CommandLine {
                text: self.line.iter().collect(),
                uncertain: self.uncertain,
            })
        }
    }

    fn byte(&mut self, b: u8) -> Option<CommandLine> {
        let was_cr = std::mem::replace(&mut self.last_was_cr, false);
        match self.escape {
            Escape::Start => {
                self.escape = match b {
                    b'[' => {
                        self.csi_params.clear();
                        Escape::Csi
                    }
                    b'O' => Escape::Ss3,
                    // ESC <char>: an Alt chord; the shell may do anything with it.
                    _ => {
                        self.uncertain = true;
                        Escape::None
                    }
                };
                return None;
            }
            Escape::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.escape = Escape::None;
                    let params = std::mem::take(&mut self.csi_params);
                    self.csi(&params, b);
                } else if self.csi_params.len() < 16 {
                    self.csi_params.push(b as char);
                }
                return None;
            }
            Escape::Ss3 => {
                self.escape = Escape::None;
                self.csi("", b);
                return None;
            }
            Escape::None => {}
        }
        if b >= 0x80 || !self.utf8.is_empty() {
            self.utf8_byte(b);
            return None;
        }
        match b {
            0x1b => self.escape = Escape::Start,
            b'\r' => {
                self.last_was_cr = true;
                return self.finish();
            }
            b'\n' if !was_cr => return self.finish(),
            0x7f | 0x08 if self.cursor > 0 => {
                self.cursor -= 1;
                self.line.remove(self.cursor);
            }
            0x15 => {
                // ^U: kill from the start of the line to the cursor.
                self.line.drain(..self.cursor);
                self.cursor = 0;
            }
            0x17 => self.kill_word(),
            0x03 => self.reset(),
            0x01 => self.cursor = 0,
            0x05 => self.cursor = self.line.len(),
            // ^D deletes under the cursor on a non-empty line (EOF on an empty one).
            0x04 if self.cursor < self.line.len() => {
                self.line.remove(self.cursor);
            }
            b'\t' => {
                self.uncertain = true;
                self.insert('\t');
            }
            0x20..=0x7e => self.insert(b as char),
            _ => {}
        }
        None
    }

    fn utf8_byte(&mut self, b: u8) {
        self.utf8.push(b);
        match std::str::from_utf8(&self.utf8) {
            Ok(s) => {
                let c = s.chars().next().unwrap_or('\u{fffd}');
                self.utf8.clear();
                self.insert(c);
            }
            Err(e) if e.error_len().is_some() || self.utf8.len() >= 4 => {
                self.utf8.clear();
                self.insert('\u{fffd}');
            }
            Err(_) => {}
        }
    }

    fn csi(&mut self, params: &str, final_byte: u8) {
        match (params, final_byte) {
            (_, b'A') | (_, b'B') => self.uncertain = true, // history recall
            (_, b'C') => self.cursor = (self.cursor + 1).min(self.line.len()),
            (_, b'D') => self.cursor = self.cursor.saturating_sub(1),
            (_, b'H') | ("1", b'~') | ("7", b'~') => self.cursor = 0,
            (_, b'F') | ("4", b'~') | ("8", b'~') => self.cursor = self.line.len(),
            ("3", b'~') if self.cursor < self.line.len() => {
                self.line.remove(self.cursor);
            }
            // Bracketed paste markers and other keys change nothing in the line.
            _ => {}
        }
    }

    fn insert(&mut self, c: char) {
        if self.line.len() >= MAX_LINE_CHARS {
            self.uncertain = true;
            return;
        }
        self.line.insert(self.cursor, c);
        self.cursor += 1;
    }

    fn kill_word(&mut self) {
        let mut start = self.cursor;
        while start > 0 && self.line[start - 1] == ' ' {
            start -= 1;
        }
        while start > 0 && self.line[start - 1] != ' ' {
            start -= 1;
        }
        self.line.drain(start..self.cursor);
        self.cursor = start;
    }

    fn reset(&mut self) {
        self.line.clear();
        self.cursor = 0;
        self.uncertain = false;
    }

    fn finish(&mut self) -> Option<CommandLine> {
        let text: String = self.line.iter().collect();
        let uncertain = self.uncertain;
        self.reset();
        if text.trim().is_empty() && !uncertain {
            return None;
        }
        Some(CommandLine { text, uncertain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        LineAssembler::new()
            .feed(input)
            .into_iter()
            .map(|l| l.text)
            .collect()
    }

    #[test]
    fn plain_lines_end_at_cr_lf_or_crlf_once() {
        assert_eq!(
            lines(b"ls -l\rid\ncat x\r\nps\r\n"),
            ["ls -l", "id", "cat x", "ps"]
        );
        assert!(
            lines(b"\r\n\r\n   \r").is_empty(),
            "blank lines are not commands"
        );
    }

    #[test]
    fn backspace_and_control_h_delete_before_the_cursor() {
        assert_eq!(lines(b"lss\x7f -la\r"), ["ls -la"]);
        assert_eq!(lines(b"cta\x08\x08at\r"), ["cat"]);
        assert_eq!(
            lines(b"\x7f\x7fid\r"),
            ["id"],
            "backspace on empty is a no-op"
        );
    }

    #[test]
    fn ctrl_u_kills_the_line_and_ctrl_c_discards_it() {
        assert_eq!(lines(b"rm -rf /\x15echo hi\r"), ["echo hi"]);
        assert_eq!(lines(b"reboot\x03id\r"), ["id"]);
        assert_eq!(lines(b"echo one two\x17three\r"), ["echo one three"]);
    }

    #[test]
    fn arrows_move_the_cursor_and_insert_in_the_middle() {
        // "ct" ← ← "a"? cursor at 0 after two lefts → "act"; then End, then "s".
        assert_eq!(lines(b"ct\x1b[D\x1b[Da\x1b[Fs\r"), ["acts"]);
        // Left then insert: "cat" with 'a' typed after going back one.
        assert_eq!(lines(b"ct\x1b[Da\r"), ["cat"]);
        // Delete key removes under the cursor; SS3 home works too.
        assert_eq!(lines(b"xid\x1bOH\x1b[3~\r"), ["id"]);
        // Right past the end stays at the end.
        assert_eq!(lines(b"i\x1b[C\x1b[Cd\r"), ["id"]);
    }

    #[test]
    fn history_recall_and_tab_mark_the_line_uncertain() {
        let mut a = LineAssembler::new();
        let got = a.feed(b"\x1b[A\r");
        assert_eq!(
            got,
            [CommandLine {
                text: String::new(),
                uncertain: true
            }]
        );
        let got = a.feed(b"cat /et\tpasswd\r");
        assert_eq!(got[0].text, "cat /et\tpasswd");
        assert!(got[0].uncertain);
        let got = a.feed(b"id\r");
        assert!(
            !got[0].uncertain,
            "uncertainty does not leak into the next line"
        );
    }

    #[test]
    fn bracketed_paste_markers_are_skipped_and_utf8_survives_split_feeds() {
        assert_eq!(lines(b"\x1b[200~echo pasted\x1b[201~\r"), ["echo pasted"]);
        let mut a = LineAssembler::new();
        let word = "grüß".as_bytes();
        assert!(a.feed(&word[..3]).is_empty());
        let got = a.feed(&[&word[3..], b"\x7f\r"].concat());
        assert_eq!(got[0].text, "grü", "backspace removes a whole character");
        assert_eq!(lines(b"a\xffb\r"), ["a\u{fffd}b"]);
    }

    #[test]
    fn pending_reports_an_unfinished_line_and_long_lines_are_capped() {
        let mut a = LineAssembler::new();
        a.feed(b"echo half");
        assert_eq!(a.pending().unwrap().text, "echo half");
        let long = vec![b'x'; MAX_LINE_CHARS + 10];
        let got = LineAssembler::new().feed(&[&long[..], b"\r"].concat());
        assert_eq!(got[0].text.len(), MAX_LINE_CHARS);
        assert!(got[0].uncertain);
    }
}
