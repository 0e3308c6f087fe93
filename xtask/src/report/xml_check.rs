//! A small XML well-formedness check for the tests, so xtask needs no XML crate:
//! one root element, properly nested and closed tags, quoted attributes without
//! `<`, and only the predefined or numeric entities.

pub fn check(doc: &str) -> Result<(), String> {
    let mut rest = doc.trim_start_matches('\u{feff}');
    if let Some(after) = rest.strip_prefix("<?xml") {
        let end = after.find("?>").ok_or("unterminated XML declaration")?;
        rest = &after[end + 2..];
    }
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    while !rest.is_empty() {
        let lt = rest.find('<').unwrap_or(rest.len());
        let text = &rest[..lt];
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("text outside the root element: {text:?}"));
        }
        entities(text)?;
        rest = &rest[lt..];
        if rest.is_empty() {
            break;
        }
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            rest = &after[end + 3..];
        } else if let Some(after) = rest.strip_prefix("</") {
            let end = after.find('>').ok_or("unterminated end tag")?;
            let name = after[..end].trim();
            match stack.pop() {
                Some(open) if open == name => {}
                open => return Err(format!("</{name}> closes {open:?}")),
            }
            rest = &after[end + 1..];
        } else {
            let after = &rest[1..];
            let end = tag_end(after)?;
            let (inner, empty) = match after[..end].strip_suffix('/') {
                Some(inner) => (inner, true),
                None => (&after[..end], false),
            };
            let name_len = inner
                .find(|c: char| c.is_whitespace())
                .unwrap_or(inner.len());
            let name = &inner[..name_len];
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_alphanumeric() || ":-_.".contains(c))
            {
                return Err(format!("bad element name {name:?}"));
            }
            attributes(&inner[name_len..])?;
            if stack.is_empty() {
                roots += 1;
            }
            if !empty {
                stack.push(name);
            }
            rest = &after[end + 1..];
        }
    }
    match (roots, stack.last()) {
        (1, None) => Ok(()),
        (_, Some(open)) => Err(format!("<{open}> is never closed")),
        (n, None) => Err(format!("{n} root elements")),
    }
}

/// The index of the `>` ending a start tag, skipping quoted attribute values.
fn tag_end(s: &str) -> Result<usize, String> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Ok(i),
            (None, '<') => return Err("'<' inside a tag".into()),
            _ => {}
        }
    }
    Err("unterminated start tag".into())
}

fn attributes(mut s: &str) -> Result<(), String> {
    let mut seen = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() {
            return Ok(());
        }
        let eq = s
            .find('=')
            .ok_or_else(|| format!("attribute without value: {s:?}"))?;
        let name = s[..eq].trim();
        if name.is_empty() || name.contains(char::is_whitespace) || seen.contains(&name) {
            return Err(format!("bad or repeated attribute name {name:?}"));
        }
        seen.push(name);
        let after = s[eq + 1..].trim_start();
        let q = after.chars().next().filter(|c| matches!(c, '"' | '\''));
        let q = q.ok_or_else(|| format!("unquoted value of {name}"))?;
        let close = after[1..].find(q).ok_or("unterminated attribute value")?;
        let value = &after[1..1 + close];
        if value.contains('<') {
            return Err(format!("'<' in the value of {name}"));
        }
        entities(value)?;
        s = &after[close + 2..];
    }
}

fn entities(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        let after = &rest[amp + 1..];
        let semi = after.find(';').ok_or("'&' without ';'")?;
        let name = &after[..semi];
        let ok = matches!(name, "amp" | "lt" | "gt" | "quot" | "apos")
            || name
                .strip_prefix("#x")
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
            || name
                .strip_prefix('#')
                .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(format!("unknown entity &{name};"));
        }
        rest = &after[semi + 1..];
    }
    if text.contains("]]>") {
        return Err("']]>' in text".into());
    }
    Ok(())
}

mod tests {
    use super::check;

    #[test]
    fn accepts_and_rejects() {
        assert_eq!(
            check("<?xml version=\"1.0\"?>\n<a x=\"1\"><b/>t &amp; &#60;</a>\n"),
            Ok(())
        );
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<a x=1/>",
            "<a x=\"<\"/>",
            "<a>&nbsp;</a>",
            "<a>a & b</a>",
            "text<a/>",
            "<a x=\"1\" x=\"2\"/>",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
    }
}
