//! The module graph of one crate, read from its source text: which module names which.
//!
//! A module is a source file: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `src/lib.rs` and
//! `src/main.rs` are the crate root. Module A *names* module B when a non-test part of A's file
//! has a path into B: a `use crate::…`, `use super::…` or `use self::…` tree, or an inline
//! `crate::…`, `super::…` or `self::…` path in code. A path is resolved to the longest module
//! prefix it has, so `crate::a::b::Thing` names `a::b` and `super::Thing` names the parent.
//! A parent that merely declares `mod child;` or re-exports the child's items
//! (`pub use child::Thing`: a facade, not a dependency) does not name it; one that uses them
//! (`use child::Thing`, `child::f()`) does, and a child naming its parent back closes a circle
//! like any other.
//!
//! Not counted: test code (files named `tests.rs` or `*_tests.rs`, files of a module declared
//! under `#[cfg(test)]`, and `#[cfg(test)] mod … { … }` blocks), comments, and paths that start
//! with another crate's name (a path that starts with one of the module's own children counts:
//! `child::X` is read as `self::child::X`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: its path segments below the crate root.
pub type Module = Vec<String>;

/// One crate's source, as the graph sees it.
pub struct Crate {
    /// Every non-test module and the text of its file, comments and test blocks removed.
    pub modules: BTreeMap<Module, String>,
    /// Every non-test source file and its line count.
    pub lines: BTreeMap<PathBuf, usize>,
}

fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let mut segments: Vec<String> = relative
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = segments.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    let is_root = segments.is_empty() && matches!(stem, "lib" | "main");
    if stem != "mod" && !is_root {
        segments.push(stem.to_string());
    }
    segments
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // A binary's own crate (`src/bin/x.rs`) is another crate.
            if path.file_name().is_some_and(|n| n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, string and char literals (replaced by spaces, lines kept).
fn strip_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            i += end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..]
                .find(&close)
                .map_or(rest.len(), |e| body + e + close.len());
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            out.push_str("\"\"");
            i += end;
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            let end = (j + 1).min(rest.len());
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            out.push_str("\"\"");
            i += end;
        } else if let Some(end) = char_literal(rest) {
            out.push_str("' '");
            i += end;
        } else {
            let c = rest.chars().next().expect("a char");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of the char literal `rest` starts with ('x', '\n', '\u{1F600}'), if it is one
/// and not a lifetime.
fn char_literal(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let (_, first) = chars.next()?;
    if first == '\\' {
        return rest[2..].find('\'').map(|e| e + 3);
    }
    let (at, second) = chars.next()?;
    (second == '\'').then_some(at + 1)
}

/// Removes `#[cfg(test)]` items (a `mod x { … }` block or any other item up to its end), and
/// returns the names of modules declared `#[cfg(test)] mod x;`.
fn strip_tests(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_modules = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        // `mod name;` — a test module in its own file.
        if let Some(declaration) = trimmed.strip_prefix("mod ")
            && let Some(end) = declaration.find([';', '{'])
            && declaration.as_bytes()[end] == b';'
        {
            test_modules.push(declaration[..end].trim().to_string());
            rest = &declaration[end + 1..];
            continue;
        }
        // Any other item: skip to the end of its first brace block (or its `;`).
        let open = after.find('{');
        let semi = after.find(';');
        match (open, semi) {
            (Some(open), semi) if semi.is_none_or(|s| open < s) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            (_, Some(semi)) => rest = &after[semi + 1..],
            _ => rest = "",
        }
    }
    out.push_str(rest);
    (out, test_modules)
}

fn is_test_file(file: &Path) -> bool {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem == "tests" || stem.ends_with("_tests")
}

impl Crate {
    /// Reads the crate at `dir` (its `src/`).
    pub fn read(dir: &Path) -> Crate {
        let src = dir.join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        files.sort();
        let mut modules = BTreeMap::new();
        let mut lines = BTreeMap::new();
        let mut test_modules: BTreeSet<Module> = BTreeSet::new();
        for file in &files {
            if is_test_file(file) {
                continue;
            }
            let text = std::fs::read_to_string(file).expect("reading a source file");
            let module = module_of(&src, file);
            let (code, tests) = strip_tests(&strip_comments(&text));
            for test in tests {
                let mut path = module.clone();
                path.push(test);
                test_modules.insert(path);
            }
            lines.insert(file.clone(), text.lines().count());
            modules.insert(module, code);
        }
        modules.retain(|module, _| !test_modules.iter().any(|t| module.starts_with(t)));
        lines.retain(|file, _| {
            let module = module_of(&src, file);
            !test_modules.iter().any(|t| module.starts_with(t))
        });
        Crate { modules, lines }
    }

    /// The longest known module that is a prefix of `path`.
    fn resolve(&self, path: &[String]) -> Option<Module> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| self.modules.contains_key(prefix))
    }

    /// Every module each module names.
    pub fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (module, code) in &self.modules {
            let children: BTreeSet<String> = self
                .modules
                .keys()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
                .map(|m| m[module.len()].clone())
                .collect();
            let mut paths = use_paths(code);
            paths.extend(inline_paths(code, &children));
            let targets = edges.entry(module.clone()).or_default();
            for path in paths {
                let Some(absolute) = absolute(module, &path, &children) else {
                    continue;
                };
                if let Some(target) = self.resolve(&absolute)
                    && target != *module
                {
                    targets.insert(target);
                }
            }
        }
        edges
    }

    /// The circles of the module graph: every strongly connected set of two or more modules.
    pub fn circles(&self) -> Vec<Vec<String>> {
        let edges = self.edges();
        let nodes: Vec<&Module> = self.modules.keys().collect();
        let index_of: BTreeMap<&Module, usize> =
            nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
        let adjacency: Vec<Vec<usize>> = nodes
            .iter()
            .map(|m| {
                edges
                    .get(*m)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| index_of.get(t).copied())
                    .collect()
            })
            .collect();
        strongly_connected(&adjacency)
            .into_iter()
            .filter(|component| component.len() > 1)
            .map(|component| {
                let mut names: Vec<String> =
                    component.into_iter().map(|i| display(nodes[i])).collect();
                names.sort();
                names
            })
            .collect()
    }
}

/// `crate` for the root, else `a::b`.
pub fn display(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// A path as written, made absolute from `module`; `None` for paths into other crates.
fn absolute(module: &Module, path: &[String], children: &BTreeSet<String>) -> Option<Module> {
    let mut base = module.clone();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) if children.contains(first) => {}
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The paths of every `use` tree in `code`, braces expanded; re-exports (`pub use`,
/// `pub(crate) use`) are left out.
fn use_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = find_keyword(rest, "use") {
        let before = rest[..at].trim_end();
        let is_reexport = before.ends_with("pub")
            || before.ends_with(')') && {
                let open = before.rfind('(').unwrap_or(0);
                before[..open].trim_end().ends_with("pub")
            };
        let after = &rest[at + 3..];
        let end = after.find(';').unwrap_or(after.len());
        if !is_reexport {
            expand(&after[..end], &mut Vec::new(), &mut paths);
        }
        rest = &after[end..];
    }
    paths
}

/// The position of `keyword` as a whole word.
fn find_keyword(text: &str, keyword: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find(keyword) {
        let at = from + found;
        let before = text[..at].chars().next_back();
        let after = text[at + keyword.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !word(before) && !word(after) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + keyword.len();
    }
    None
}

/// Expands a use tree (`a::{b, c::{d as e}}`) under `prefix`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = segments(&tree[..open]);
        let close = tree.rfind('}').unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let depth = prefix.len();
        prefix.extend(head);
        for part in split_top_level(inner) {
            expand(part, prefix, out);
        }
        prefix.truncate(depth);
    } else {
        let without_alias = tree.split(" as ").next().unwrap_or(tree);
        let mut path = prefix.clone();
        path.extend(segments(without_alias).into_iter().filter(|s| s != "*"));
        // `a::{self, B}`: the `self` is `a`; a leading `self::` stays for `absolute`.
        let leading_self = path.first().is_some_and(|s| s == "self");
        let mut kept: Vec<String> = path
            .into_iter()
            .skip(usize::from(leading_self))
            .filter(|s| s != "self")
            .collect();
        if leading_self {
            kept.insert(0, "self".to_string());
        }
        let path = kept;
        if !path.is_empty() {
            out.push(path);
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Inline `crate::…`, `super::…`, `self::…` and `child::…` paths outside `use` statements.
fn inline_paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut without_uses = String::new();
    let mut rest = code;
    while let Some(at) = find_keyword(rest, "use") {
        without_uses.push_str(&rest[..at]);
        let after = &rest[at..];
        rest = &after[after.find(';').map_or(after.len(), |e| e + 1)..];
    }
    without_uses.push_str(rest);
    let mut paths = Vec::new();
    let starts = ["crate", "super", "self"]
        .into_iter()
        .map(str::to_string)
        .chain(children.iter().cloned())
        .map(|start| format!("{start}::"));
    for start in starts {
        let start = start.as_str();
        let mut from = 0;
        while let Some(found) = without_uses[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            let before = without_uses[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = without_uses[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path: Vec<String> = path
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            paths.push(path);
        }
    }
    paths
}

/// Tarjan's strongly connected components.
fn strongly_connected(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adjacency: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(state: &mut State<'_>, v: usize) {
        state.index[v] = Some(state.next);
        state.low[v] = state.next;
        state.next += 1;
        state.stack.push(v);
        state.on_stack[v] = true;
        for &w in &state.adjacency[v] {
            match state.index[w] {
                None => {
                    visit(state, w);
                    state.low[v] = state.low[v].min(state.low[w]);
                }
                Some(index) if state.on_stack[w] => state.low[v] = state.low[v].min(index),
                Some(_) => {}
            }
        }
        if Some(state.low[v]) == state.index[v] {
            let mut component = Vec::new();
            loop {
                let w = state.stack.pop().expect("on the stack");
                state.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            state.components.push(component);
        }
    }
    let n = adjacency.len();
    let mut state = State {
        adjacency,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.components
}
