//! `WWW-Authenticate` parsing (RFC 7235). Registries send one `Bearer` or
//! `Basic` challenge, but values are quoted strings that may contain commas
//! (`scope="repository:a/b:pull,push"`), so splitting on commas is wrong.

/// One challenge: scheme and parameters, names lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        debug_assert_eq!(name, name.to_ascii_lowercase());
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Equals,
    Comma,
}

/// Characters of a token or a token68 (`/` only appears in the latter).
fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/:".contains(c)
}

fn tokenize(header: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut chars = header.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '=' => {
                chars.next();
                toks.push(Tok::Equals);
            }
            ',' => {
                chars.next();
                toks.push(Tok::Comma);
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                // An unterminated quote takes the rest of the header: lenient,
                // because the worst outcome is a token request that fails.
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
                toks.push(Tok::Quoted(value));
            }
            c if word_char(c) => {
                let mut word = String::new();
                while let Some(&c) = chars.peek().filter(|c| word_char(**c)) {
                    word.push(c);
                    chars.next();
                }
                toks.push(Tok::Word(word));
            }
            _ => {
                // Whitespace and stray characters separate tokens.
                chars.next();
            }
        }
    }
    toks
}

/// Parses every challenge in one header value. Malformed pieces are skipped,
/// never fatal: the caller just finds no usable challenge.
pub(crate) fn parse(header: &str) -> Vec<Challenge> {
    let toks = tokenize(header);
    let mut challenges = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let Tok::Word(scheme) = &toks[i] else {
            i += 1;
            continue;
        };
        i += 1;
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        let mut first = true;
        while i < toks.len() {
            match (&toks[i], toks.get(i + 1), toks.get(i + 2)) {
                (Tok::Comma, _, _) => i += 1,
                (Tok::Word(name), Some(Tok::Equals), Some(Tok::Word(v) | Tok::Quoted(v))) => {
                    challenge.params.push((name.to_ascii_lowercase(), v.clone()));
                    i += 3;
                }
                (Tok::Word(name), Some(Tok::Equals), None | Some(Tok::Comma)) if !first => {
                    challenge.params.push((name.to_ascii_lowercase(), String::new()));
                    i += 2;
                }
                (Tok::Word(_), _, _) if first => {
                    // token68 (`Basic dXNlcg==`): credentials-like data that
                    // no registry challenge needs; skip it and its padding.
                    i += 1;
                    while matches!(toks.get(i), Some(Tok::Equals)) {
                        i += 1;
                    }
                }
                // A word not followed by `=` starts the next challenge.
                (Tok::Word(_), _, _) => break,
                _ => i += 1,
            }
            first = false;
        }
        challenges.push(challenge);
    }
    challenges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn challenge_table() {
        let hub = c(
            "bearer",
            &[
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:library/alpine:pull"),
            ],
        );
        let cases: Vec<(&str, Vec<Challenge>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                vec![hub.clone()],
            ),
            (
                r#"bearer   REALM = "https://auth.docker.io/token" , Service="registry.docker.io",scope="repository:library/alpine:pull""#,
                vec![hub.clone()],
            ),
            (
                r#"Bearer realm="https://r/token",scope="repository:a/b:pull,push""#,
                vec![c(
                    "bearer",
                    &[
                        ("realm", "https://r/token"),
                        ("scope", "repository:a/b:pull,push"),
                    ],
                )],
            ),
            (
                r#"Bearer realm=https://r/token,service=reg"#,
                vec![c("bearer", &[("realm", "https://r/token"), ("service", "reg")])],
            ),
            (
                r#"Basic realm="Registry Realm""#,
                vec![c("basic", &[("realm", "Registry Realm")])],
            ),
            ("Basic", vec![c("basic", &[])]),
            (
                r#"Basic realm="x", Bearer realm="https://r/t",service="s""#,
                vec![
                    c("basic", &[("realm", "x")]),
                    c("bearer", &[("realm", "https://r/t"), ("service", "s")]),
                ],
            ),
            (
                r#"Basic, Bearer realm="https://r/t""#,
                vec![c("basic", &[]), c("bearer", &[("realm", "https://r/t")])],
            ),
            (
                "Negotiate dXNlcjpwYXNz==, Basic",
                vec![c("negotiate", &[]), c("basic", &[])],
            ),
            (
                r#"Bearer realm="a \"quoted\" \\ realm",error="insufficient_scope""#,
                vec![c(
                    "bearer",
                    &[
                        ("realm", r#"a "quoted" \ realm"#),
                        ("error", "insufficient_scope"),
                    ],
                )],
            ),
            (
                r#"Bearer realm="unterminated, scope=x"#,
                vec![c("bearer", &[("realm", "unterminated, scope=x")])],
            ),
            (
                r#"Bearer realm="",service="#,
                vec![c("bearer", &[("realm", ""), ("service", "")])],
            ),
            (
                r#"Bearer realm="https://r/t",,, ,scope="s""#,
                vec![c("bearer", &[("realm", "https://r/t"), ("scope", "s")])],
            ),
            ("", vec![]),
            (" , ,", vec![]),
            ("\"stray\" = ,", vec![]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "{input:?}");
        }
    }

    #[test]
    fn param_lookup_takes_the_first() {
        let got = parse(r#"Bearer realm="one",realm="two""#);
        assert_eq!(got[0].param("realm"), Some("one"));
        assert_eq!(got[0].param("scope"), None);
    }
}
