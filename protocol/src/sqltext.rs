//! Reading SQL text without running it: a tokenizer for SQLite's lexical
//! grammar, the safe expression grammar for schema constraints (CHECK and
//! default expressions), and the parts of a `CREATE TABLE` statement that
//! SQLite's pragmas do not report (column collations, CHECK constraints,
//! foreign keys, table options).
//!
//! An expression that passes [`canonical_expr`] is re-emitted from its
//! tokens — keywords upper-cased, identifiers quoted, literals re-quoted —
//! so the text a client builds never holds a byte that was not checked.

use crate::sql::quote_ident;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// A bare word: keyword or identifier, as written.
    Word(String),
    /// A quoted identifier (`"x"`, `[x]`, `` `x` ``), unquoted.
    Quoted(String),
    /// A string literal, unquoted.
    Str(String),
    /// A blob literal's hex digits (upper-cased).
    Blob(String),
    /// A numeric literal, as written.
    Number(String),
    /// An operator or punctuation.
    Op(&'static str),
    /// A bound parameter (`?`, `?1`, `:x`, `@x`, `$x`).
    Param,
}

const OPS: &[&str] = &[
    "->>", "||", "<=", ">=", "==", "!=", "<>", "<<", ">>", "->", "(", ")", ",", ";", "+", "-", "*",
    "/", "%", "<", ">", "=", "&", "|", "~", ".",
];

/// Splits SQL text into tokens, dropping white space and comments.
pub fn tokenize(sql: &str) -> Result<Vec<Token>, String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let text = |from: usize, to: usize| String::from_utf8_lossy(&b[from..to]).into_owned();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = find(b, i + 2, b"*/").ok_or("unterminated comment")?;
            i = end + 2;
        } else if c == b'\'' {
            let (s, next) = quoted(b, i, b'\'')?;
            out.push(Token::Str(s));
            i = next;
        } else if c == b'"' || c == b'`' {
            let (s, next) = quoted(b, i, c)?;
            out.push(Token::Quoted(s));
            i = next;
        } else if c == b'[' {
            let end = b[i..]
                .iter()
                .position(|x| *x == b']')
                .ok_or("unterminated [identifier]")?;
            out.push(Token::Quoted(text(i + 1, i + end)));
            i += end + 1;
        } else if (c == b'x' || c == b'X') && b.get(i + 1) == Some(&b'\'') {
            let (s, next) = quoted(b, i + 1, b'\'')?;
            if s.len() % 2 != 0 || !s.bytes().all(|h| h.is_ascii_hexdigit()) {
                return Err("malformed blob literal".into());
            }
            out.push(Token::Blob(s.to_ascii_uppercase()));
            i = next;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            if c == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
                i += 2;
                let digits = i;
                while i < b.len() && b[i].is_ascii_hexdigit() {
                    i += 1;
                }
                if i == digits {
                    return Err("malformed number".into());
                }
            } else {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i < b.len() && b[i] == b'.' {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                    i += 1;
                    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                        i += 1;
                    }
                    let digits = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    if i == digits {
                        return Err("malformed number".into());
                    }
                }
            }
            if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                return Err("malformed number".into());
            }
            out.push(Token::Number(text(start, i)));
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push(Token::Word(text(start, i)));
        } else if matches!(c, b'?' | b':' | b'@' | b'$') {
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Token::Param);
        } else if let Some(op) = OPS.iter().find(|op| b[i..].starts_with(op.as_bytes())) {
            out.push(Token::Op(op));
            i += op.len();
        } else {
            return Err(format!("unexpected character {:?}", c as char));
        }
    }
    Ok(out)
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// A quoted token starting at `b[i] == q`, with doubled quotes inside:
/// its content and the index after it.
fn quoted(b: &[u8], i: usize, q: u8) -> Result<(String, usize), String> {
    let mut out = Vec::new();
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err("unterminated quoted text".into()),
            Some(x) if *x == q => {
                if b.get(j + 1) == Some(&q) {
                    out.push(q);
                    j += 2;
                } else {
                    break;
                }
            }
            Some(x) => {
                out.push(*x);
                j += 1;
            }
        }
    }
    let s = String::from_utf8(out).map_err(|_| "quoted text is not UTF-8".to_string())?;
    if s.contains('\0') {
        return Err("quoted text holds a NUL character".into());
    }
    Ok((s, j + 1))
}

/// The functions a schema expression may call: deterministic, bounded in
/// memory by their arguments, and touching nothing but their arguments.
pub const SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "char",
    "coalesce",
    "glob",
    "hex",
    "ifnull",
    "iif",
    "instr",
    "json_valid",
    "length",
    "like",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "round",
    "rtrim",
    "sign",
    "substr",
    "substring",
    "trim",
    "typeof",
    "unicode",
    "upper",
];

/// Keywords an expression may hold (upper-case).
const EXPR_KEYWORDS: &[&str] = &[
    "AND", "OR", "NOT", "IS", "NULL", "IN", "BETWEEN", "LIKE", "GLOB", "ESCAPE", "CASE", "WHEN",
    "THEN", "ELSE", "END", "COLLATE", "CAST", "AS", "ISNULL", "NOTNULL", "TRUE", "FALSE",
    "DISTINCT", "FROM",
];

/// Keywords that stand for a value of the moment (defaults only).
const TIME_KEYWORDS: &[&str] = &["CURRENT_TIME", "CURRENT_DATE", "CURRENT_TIMESTAMP"];

/// Collations a schema may name: SQLite's built-in ones.
pub const COLLATIONS: &[&str] = &["BINARY", "NOCASE", "RTRIM"];

/// Where an expression stands, which decides what it may name.
pub enum ExprContext<'a> {
    /// A CHECK constraint: may name the table's columns.
    Check { columns: &'a [String] },
    /// A column default: no columns; may use CURRENT_TIMESTAMP and kin.
    Default,
}

/// Validates an expression against the safe grammar and returns its
/// canonical text (tokens separated by single spaces, keywords and
/// collations upper-case, functions lower-case, identifiers quoted with
/// the column's own spelling, literals re-quoted).
pub fn canonical_expr(sql: &str, ctx: &ExprContext<'_>) -> Result<String, String> {
    let tokens = tokenize(sql)?;
    if tokens.is_empty() {
        return Err("empty expression".into());
    }
    if tokens.len() > 512 {
        return Err("expression is longer than 512 tokens".into());
    }
    let stack = parser_stack(&tokens);
    if stack > MAX_PARSER_STACK {
        return Err(format!(
            "expression nests too deeply for older SQLite versions (it would take about {stack} of the {MAX_PARSER_STACK} parser-stack entries an expression may; SQLite 3.40 has 100 in all): nest fewer parentheses, calls or CASEs"
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut depth: i32 = 0;
    let mut i = 0;
    while i < tokens.len() {
        let next_is_paren = tokens.get(i + 1) == Some(&Token::Op("("));
        let piece = match &tokens[i] {
            Token::Param => return Err("parameters are not allowed here".into()),
            Token::Op(";") => return Err("';' is not allowed in an expression".into()),
            Token::Op(".") => return Err("qualified names are not allowed here".into()),
            Token::Op(op @ ("->" | "->>")) => return Err(format!("operator {op} is not allowed")),
            Token::Op("(") => {
                depth += 1;
                "(".to_string()
            }
            Token::Op(")") => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced parentheses".into());
                }
                ")".to_string()
            }
            Token::Op(op) => op.to_string(),
            Token::Number(n) => n.clone(),
            Token::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Token::Blob(h) => format!("X'{h}'"),
            Token::Quoted(name) => column(name, ctx)?,
            Token::Word(w) => {
                let upper = w.to_ascii_uppercase();
                if next_is_paren {
                    let lower = w.to_ascii_lowercase();
                    if SAFE_FUNCTIONS.contains(&lower.as_str()) {
                        lower
                    } else if upper == "CAST" || EXPR_KEYWORDS.contains(&upper.as_str()) {
                        upper
                    } else {
                        return Err(format!(
                            "function {w:?} is not allowed (allowed: {})",
                            SAFE_FUNCTIONS.join(", ")
                        ));
                    }
                } else if upper == "COLLATE" {
                    let name = match tokens.get(i + 1) {
                        Some(Token::Word(c)) | Some(Token::Quoted(c)) => c.to_ascii_uppercase(),
                        _ => return Err("COLLATE needs a collation name".into()),
                    };
                    if !COLLATIONS.contains(&name.as_str()) {
                        return Err(format!("collation {name:?} is not allowed"));
                    }
                    i += 1;
                    format!("COLLATE {name}")
                } else if upper == "AS" {
                    // Only inside CAST(x AS type): the type follows.
                    let (ty, used) = type_name(&tokens[i + 1..])?;
                    i += used;
                    format!("AS {ty}")
                } else if EXPR_KEYWORDS.contains(&upper.as_str()) {
                    upper
                } else if TIME_KEYWORDS.contains(&upper.as_str()) {
                    if !matches!(ctx, ExprContext::Default) {
                        return Err(format!("{upper} is only allowed in a default"));
                    }
                    upper
                } else {
                    column(w, ctx)?
                }
            }
        };
        out.push(piece);
        i += 1;
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    Ok(out.join(" "))
}

/// The most parser-stack entries an expression may take, by the estimate
/// of [`parser_stack`]. SQLite's parser has a fixed stack of 100 entries
/// (`YYSTACKDEPTH`) up to 3.45 — Debian 12's SQLite is 3.40 — and later
/// versions grow it: a schema whose CHECK the witness's SQLite reads may
/// not be readable on a device with an older one, for good. The estimate
/// is never below what SQLite 3.40 takes (tests/red_admin.rs checks it
/// against the `sqlite3` command line), and the statement around the
/// expression (`CREATE TABLE t (..., CHECK (`) takes fewer than 12 more.
pub const MAX_PARSER_STACK: usize = 60;

/// Binding levels of SQLite's binary operators (higher binds tighter).
fn binary_level(t: &Token) -> Option<u8> {
    Some(match t {
        Token::Word(w) => match w.to_ascii_uppercase().as_str() {
            "OR" => 1,
            "AND" => 2,
            "IS" | "IN" | "LIKE" | "GLOB" | "BETWEEN" | "ISNULL" | "NOTNULL" => 4,
            "ESCAPE" => 6,
            _ => return None,
        },
        Token::Op(op) => match *op {
            "=" | "==" | "!=" | "<>" => 4,
            "<" | "<=" | ">" | ">=" => 5,
            "&" | "|" | "<<" | ">>" => 7,
            "+" | "-" => 8,
            "*" | "/" | "%" => 9,
            "||" | "->" | "->>" => 10,
            _ => return None,
        },
        _ => return None,
    })
}

/// An upper estimate of the entries SQLite's (LALR) parser holds on its
/// stack at once while reading `tokens` as an expression: every open
/// parenthesis, call or CASE holds a few, and inside each, every operator
/// still waiting for its right side two (an operand and the operator),
/// every prefix operator one.
pub fn parser_stack(tokens: &[Token]) -> usize {
    struct Frame {
        base: usize,
        /// Pending binary operators (level) and prefix ones (level 3 for
        /// NOT, 11 for - + ~), each with its entries.
        ops: Vec<(u8, usize)>,
        case: bool,
        between: usize,
    }
    let cost = |frames: &[Frame]| -> usize {
        frames
            .iter()
            .map(|f| f.base + f.ops.iter().map(|(_, c)| c).sum::<usize>())
            .sum()
    };
    let mut frames = vec![Frame {
        base: 0,
        ops: Vec::new(),
        case: false,
        between: 0,
    }];
    let mut max = 0;
    // Whether the previous token ended an operand (so a following `-` or
    // `NOT` is not a prefix).
    let mut after_operand = false;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let upper = match t {
            Token::Word(w) => w.to_ascii_uppercase(),
            _ => String::new(),
        };
        let top = frames.len() - 1;
        match t {
            Token::Op("(") => {
                // A call holds its name and its open argument list; a
                // plain parenthesis less.
                let call = i > 0 && matches!(tokens[i - 1], Token::Word(_));
                frames.push(Frame {
                    base: if call { 4 } else { 2 },
                    ops: Vec::new(),
                    case: false,
                    between: 0,
                });
                after_operand = false;
            }
            Token::Op(")") => {
                if frames.len() > 1 {
                    frames.pop();
                }
                after_operand = true;
            }
            Token::Op(",") => {
                let f = &mut frames[top];
                f.ops.clear();
                f.base = f.base.max(6);
                after_operand = false;
            }
            _ if upper == "CASE" => {
                frames.push(Frame {
                    base: 2,
                    ops: Vec::new(),
                    case: true,
                    between: 0,
                });
                after_operand = false;
            }
            _ if matches!(upper.as_str(), "WHEN" | "THEN" | "ELSE") && frames[top].case => {
                let f = &mut frames[top];
                f.ops.clear();
                f.base = 7;
                after_operand = false;
            }
            _ if upper == "END" && frames[top].case => {
                frames.pop();
                after_operand = true;
            }
            _ if upper == "AS" => {
                // CAST(x AS type): the type's words and size.
                i += 1;
                while let Some(Token::Word(_)) = tokens.get(i) {
                    i += 1;
                }
                if tokens.get(i) == Some(&Token::Op("(")) {
                    while i < tokens.len() && tokens[i] != Token::Op(")") {
                        i += 1;
                    }
                    i += 1;
                }
                after_operand = false;
                continue;
            }
            _ if upper == "COLLATE" => {
                // A postfix: the name follows and reduces at once.
                i += 2;
                after_operand = true;
                continue;
            }
            _ if upper == "AND" && frames[top].between > 0 => {
                let f = &mut frames[top];
                f.between -= 1;
                if let Some(last) = f.ops.last_mut() {
                    last.1 += 2;
                }
                after_operand = false;
            }
            _ if !after_operand && (upper == "NOT" || matches!(t, Token::Op("-" | "+" | "~"))) => {
                let level = if upper == "NOT" { 3 } else { 11 };
                frames[top].ops.push((level, 1));
            }
            _ if upper == "NOT" => {
                // NOT LIKE, NOT IN, NOT BETWEEN, NOT NULL: one entry more
                // for the operator that follows.
                frames[top].ops.push((4, 1));
            }
            _ => match binary_level(t) {
                Some(level) => {
                    let f = &mut frames[top];
                    while f.ops.last().is_some_and(|(l, _)| *l >= level) {
                        f.ops.pop();
                    }
                    f.ops.push((level, 2));
                    if upper == "BETWEEN" {
                        f.between += 1;
                    }
                    after_operand = matches!(upper.as_str(), "ISNULL" | "NOTNULL");
                }
                None => {
                    after_operand = !(matches!(t, Token::Word(_))
                        && tokens.get(i + 1) == Some(&Token::Op("(")));
                }
            },
        }
        // The operand being read takes one entry more.
        max = max.max(cost(&frames) + 1);
        i += 1;
    }
    max
}

/// What an expression may cost SQLite to evaluate, in units of the
/// largest value in the row: each column it reads counts once, twice
/// inside `hex` (the one function whose result outgrows its argument).
/// A CHECK is evaluated on every row written, inside the writer's
/// transaction, so the witness bounds it where it is defined
/// ([`budget_check`]).
pub const MAX_CHECK_COST: usize = 64;

/// The longest pattern (LIKE, GLOB), needle (`instr`) or set of characters
/// (`trim`) a CHECK may use: their cost grows with its length times the
/// value's.
pub const MAX_PATTERN_BYTES: usize = 64;

/// Checks that an expression of the safe grammar can be evaluated in time
/// and memory proportional to the row it reads: no `hex` inside `hex`;
/// LIKE and GLOB patterns, `instr`'s needle and `trim`'s characters are
/// string literals of at most [`MAX_PATTERN_BYTES`] (a pattern from the
/// row itself costs its length times the value's); and its cost (see
/// [`MAX_CHECK_COST`]) is returned. The witness calls it on every CHECK
/// when a schema or migration is defined; expressions already accepted
/// are not checked again.
pub fn budget_check(sql: &str) -> Result<usize, String> {
    let tokens = tokenize(sql)?;
    // The functions open at each depth of parentheses (None: a plain one).
    let mut calls: Vec<Option<String>> = Vec::new();
    let mut args: Vec<usize> = Vec::new();
    let mut cost = 0usize;
    let literal = |i: usize, what: &str, ends: &[&str]| -> Result<(), String> {
        match (tokens.get(i), tokens.get(i + 1)) {
            (Some(Token::Str(p)), next)
                if next.is_none_or(|n| match n {
                    Token::Op(op) => ends.contains(op),
                    Token::Word(w) => ends.contains(&w.to_ascii_uppercase().as_str()),
                    _ => false,
                }) =>
            {
                if p.len() > MAX_PATTERN_BYTES {
                    return Err(format!(
                        "{what} is longer than {MAX_PATTERN_BYTES} bytes"
                    ));
                }
                Ok(())
            }
            _ => Err(format!(
                "{what} must be a string literal (a pattern from the row costs its length times the value's on every write)"
            )),
        }
    };
    // What may follow a pattern: nothing that binds tighter than LIKE.
    const AFTER_PATTERN: &[&str] = &[
        ")", ",", "=", "==", "!=", "<>", "AND", "OR", "ESCAPE", "IS", "THEN", "ELSE", "WHEN",
        "END", "NOT", "IN", "LIKE", "GLOB",
    ];
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Op("(") => {
                let name = match i.checked_sub(1).and_then(|k| tokens.get(k)) {
                    Some(Token::Word(w)) => Some(w.to_ascii_lowercase()),
                    _ => None,
                };
                if name.as_deref() == Some("hex") && calls.iter().flatten().any(|c| c == "hex") {
                    return Err(
                        "hex() inside hex() is not allowed (each doubles its argument)".into(),
                    );
                }
                if let Some("like" | "glob") = name.as_deref() {
                    literal(i + 1, "a LIKE or GLOB pattern", &[","])?;
                }
                calls.push(name);
                args.push(0);
            }
            Token::Op(",") => {
                if let Some(n) = args.last_mut() {
                    *n += 1;
                    let what = match (calls.last().cloned().flatten().as_deref(), *n) {
                        (Some("instr"), 1) => Some("instr()'s needle"),
                        (Some("trim" | "ltrim" | "rtrim"), 1) => {
                            Some("the characters trim() removes")
                        }
                        (Some("like" | "glob"), 2) => Some("a LIKE escape character"),
                        _ => None,
                    };
                    if let Some(what) = what {
                        literal(i + 1, what, &[")"])?;
                    }
                }
            }
            Token::Op(")") => {
                calls.pop();
                args.pop();
            }
            Token::Word(w)
                if matches!(w.to_ascii_uppercase().as_str(), "LIKE" | "GLOB" | "ESCAPE")
                    && tokens.get(i + 1) != Some(&Token::Op("(")) =>
            {
                literal(i + 1, "a LIKE or GLOB pattern", AFTER_PATTERN)?;
            }
            Token::Quoted(_) => {
                let inside_hex = calls.iter().flatten().any(|c| c == "hex");
                cost += if inside_hex { 2 } else { 1 };
            }
            _ => {}
        }
    }
    if cost > MAX_CHECK_COST {
        return Err(format!(
            "it reads the row's values {cost} times (hex counts twice); at most {MAX_CHECK_COST}"
        ));
    }
    Ok(cost)
}

/// `expr` (canonical, of the safe grammar) with every reference to column
/// `from` made one to `to`, rebuilt from its tokens — a string literal that
/// holds the name stays as it is. `columns` are the table's columns after
/// the rename.
pub fn rename_column(
    expr: &str,
    from: &str,
    to: &str,
    columns: &[String],
) -> Result<String, String> {
    let tokens: Vec<Token> = tokenize(expr)?
        .into_iter()
        .map(|t| match t {
            Token::Quoted(q) if q.eq_ignore_ascii_case(from) => Token::Quoted(to.to_string()),
            t => t,
        })
        .collect();
    canonical_expr(&render(&tokens), &ExprContext::Check { columns })
}

/// Whether `expr` (canonical) names column `name` (not inside a literal).
pub fn names_column(expr: &str, name: &str) -> bool {
    tokenize(expr).is_ok_and(|tokens| {
        tokens
            .iter()
            .any(|t| matches!(t, Token::Quoted(q) if q.eq_ignore_ascii_case(name)))
    })
}

fn column(name: &str, ctx: &ExprContext<'_>) -> Result<String, String> {
    match ctx {
        ExprContext::Check { columns } => columns
            .iter()
            .find(|c| c.eq_ignore_ascii_case(name))
            .map(|c| quote_ident(c))
            .ok_or_else(|| format!("{name:?} is not a column of this table")),
        ExprContext::Default => Err(format!("a default cannot name {name:?}")),
    }
}

/// A declared type name (`TEXT`, `VARCHAR(10)`, `DECIMAL(10, 2)`) at the
/// front of `tokens`: its canonical text and how many tokens it used.
fn type_name(tokens: &[Token]) -> Result<(String, usize), String> {
    let mut words = Vec::new();
    let mut used = 0;
    while let Some(Token::Word(w)) = tokens.get(used) {
        words.push(w.to_ascii_uppercase());
        used += 1;
    }
    if words.is_empty() {
        return Err("a type name is expected".into());
    }
    let mut text = words.join(" ");
    if tokens.get(used) == Some(&Token::Op("(")) {
        let mut args = Vec::new();
        used += 1;
        loop {
            let mut arg = String::new();
            if let Some(Token::Op(s @ ("+" | "-"))) = tokens.get(used) {
                arg.push_str(s);
                used += 1;
            }
            match tokens.get(used) {
                Some(Token::Number(n)) => arg.push_str(n),
                _ => return Err("a type's size must be a number".into()),
            }
            used += 1;
            args.push(arg);
            match tokens.get(used) {
                Some(Token::Op(",")) if args.len() < 2 => used += 1,
                Some(Token::Op(")")) => {
                    used += 1;
                    break;
                }
                _ => return Err("malformed type size".into()),
            }
        }
        text = format!("{text}({})", args.join(", "));
    }
    Ok((text, used))
}

/// Validates a declared column type and returns its canonical text
/// (upper-case words, one space between them, an optional size). The
/// empty type is allowed (BLOB affinity).
pub fn canonical_type(decl: &str) -> Result<String, String> {
    let tokens = tokenize(decl)?;
    if tokens.is_empty() {
        return Ok(String::new());
    }
    let (text, used) = type_name(&tokens)?;
    if used != tokens.len() {
        return Err(format!("{decl:?} is not a type name"));
    }
    if text.len() > 64 {
        return Err("type names are at most 64 characters".into());
    }
    Ok(text)
}

/// What `CREATE TABLE` text says that SQLite's pragmas do not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableText {
    /// (column name, collation as written) for each `COLLATE` clause.
    pub collations: Vec<(String, String)>,
    /// Each CHECK constraint's expression, as written.
    pub checks: Vec<String>,
    pub foreign_keys: bool,
    pub without_rowid: bool,
    pub strict: bool,
}

/// Reads the constraints of a `CREATE TABLE name (...) [options]` text.
pub fn table_text(sql: &str) -> Result<TableText, String> {
    let tokens = tokenize(sql)?;
    let open = tokens
        .iter()
        .position(|t| *t == Token::Op("("))
        .ok_or("CREATE TABLE without a column list")?;
    let mut depth = 0;
    let mut close = None;
    for (k, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Op("(") => depth += 1,
            Token::Op(")") => {
                depth -= 1;
                if depth == 0 {
                    close = Some(k);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.ok_or("unbalanced parentheses in CREATE TABLE")?;
    let mut out = TableText::default();
    for t in &tokens[close + 1..] {
        match t {
            Token::Word(w) if w.eq_ignore_ascii_case("rowid") => out.without_rowid = true,
            Token::Word(w) if w.eq_ignore_ascii_case("strict") => out.strict = true,
            _ => {}
        }
    }
    // Split the body at top-level commas: column definitions first, then
    // table constraints.
    let body = &tokens[open + 1..close];
    let mut defs: Vec<&[Token]> = Vec::new();
    let (mut start, mut depth) = (0, 0);
    for (k, t) in body.iter().enumerate() {
        match t {
            Token::Op("(") => depth += 1,
            Token::Op(")") => depth -= 1,
            Token::Op(",") if depth == 0 => {
                defs.push(&body[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    defs.push(&body[start..]);
    for def in defs {
        let word = |t: Option<&Token>, w: &str| matches!(t, Some(Token::Word(x)) if x.eq_ignore_ascii_case(w));
        let first = def.first();
        let is_constraint = ["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"]
            .iter()
            .any(|w| word(first, w));
        let column = match first {
            Some(Token::Word(n)) | Some(Token::Quoted(n)) | Some(Token::Str(n))
                if !is_constraint =>
            {
                Some(n.clone())
            }
            _ => None,
        };
        let (mut k, mut depth) = (0, 0);
        while k < def.len() {
            match def[k] {
                Token::Op("(") => depth += 1,
                Token::Op(")") => depth -= 1,
                _ => {}
            }
            if word(def.get(k), "REFERENCES") || word(def.get(k), "FOREIGN") {
                out.foreign_keys = true;
            }
            // A column's own collation stands outside any parentheses.
            if depth == 0 && word(def.get(k), "COLLATE") {
                if let (Some(col), Some(Token::Word(c) | Token::Quoted(c))) =
                    (&column, def.get(k + 1))
                {
                    out.collations.push((col.clone(), c.clone()));
                }
            }
            if word(def.get(k), "CHECK") && def.get(k + 1) == Some(&Token::Op("(")) {
                let (expr, end) = group(def, k + 1)?;
                out.checks.push(expr);
                k = end;
                continue;
            }
            k += 1;
        }
    }
    Ok(out)
}

/// The tokens inside the parenthesised group opening at `def[open]`, as
/// text for [`canonical_expr`], and the index after the group.
fn group(def: &[Token], open: usize) -> Result<(String, usize), String> {
    let mut depth = 0;
    for (k, t) in def.iter().enumerate().skip(open) {
        match t {
            Token::Op("(") => depth += 1,
            Token::Op(")") => {
                depth -= 1;
                if depth == 0 {
                    return Ok((render(&def[open + 1..k]), k + 1));
                }
            }
            _ => {}
        }
    }
    Err("unbalanced parentheses".into())
}

/// Tokens back to text that tokenizes to the same tokens.
fn render(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => quote_ident(q),
            Token::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Token::Blob(h) => format!("X'{h}'"),
            Token::Number(n) => n.clone(),
            Token::Op(op) => op.to_string(),
            Token::Param => "?".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str) -> Result<String, String> {
        let cols = vec!["title".to_string(), "Done".to_string()];
        canonical_expr(sql, &ExprContext::Check { columns: &cols })
    }

    #[test]
    fn safe_expressions_come_back_canonical_and_stable() {
        let c = check("length(title)<=200 and \"done\" in (0,1) or title like 'a''b%'").unwrap();
        assert_eq!(
            c,
            "length ( \"title\" ) <= 200 AND \"Done\" IN ( 0 , 1 ) OR \"title\" LIKE 'a''b%'"
        );
        assert_eq!(check(&c).unwrap(), c);
        assert_eq!(
            check("CAST(title AS varchar( 10 )) COLLATE nocase = 'X'").unwrap(),
            "CAST ( \"title\" AS VARCHAR(10) ) COLLATE NOCASE = 'X'"
        );
        assert_eq!(
            canonical_expr("CURRENT_TIMESTAMP", &ExprContext::Default).unwrap(),
            "CURRENT_TIMESTAMP"
        );
    }

    #[test]
    fn anything_outside_the_grammar_is_refused() {
        for bad in [
            "load_extension('/tmp/x.so')",
            "randomblob(1000000000)",
            "1); DROP TABLE t; --",
            "title = (SELECT 1)",
            "other_column > 0",
            "t.title > 0",
            "title = ?",
            "title = :x",
            "title COLLATE evil",
            "(title",
            "title)",
            "printf('%.*c', 1000000000, 'x')",
            "title -> '$.a'",
            "",
        ] {
            assert!(check(bad).is_err(), "accepted: {bad}");
        }
        assert!(canonical_expr("title", &ExprContext::Default).is_err());
        assert!(check("CURRENT_TIMESTAMP").is_err());
    }

    #[test]
    fn types_have_a_strict_grammar() {
        assert_eq!(canonical_type("varchar( 10 )").unwrap(), "VARCHAR(10)");
        assert_eq!(
            canonical_type("double  precision").unwrap(),
            "DOUBLE PRECISION"
        );
        assert_eq!(canonical_type("DECIMAL(10,-2)").unwrap(), "DECIMAL(10, -2)");
        assert_eq!(canonical_type("").unwrap(), "");
        for bad in [
            "TEXT); DROP TABLE app_secrets; SELECT load_extension('x'); --",
            "TEXT DEFAULT 1",
            "INT(a)",
            "'TEXT'",
            "TEXT(1,2,3)",
        ] {
            assert!(canonical_type(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn table_text_finds_what_pragmas_hide() {
        let t = table_text(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE CHECK (length(name) > 0),
              \"a,b\" TEXT, CONSTRAINT c CHECK (id > 0), UNIQUE(name)) WITHOUT ROWID, STRICT",
        )
        .unwrap();
        assert_eq!(t.collations, vec![("name".into(), "NOCASE".into())]);
        assert_eq!(t.checks, vec!["length ( name ) > 0", "id > 0"]);
        assert!(t.without_rowid && t.strict && !t.foreign_keys);
        let fk = table_text("CREATE TABLE u(id INTEGER PRIMARY KEY, t REFERENCES t(id))").unwrap();
        assert!(fk.foreign_keys);
    }

    #[test]
    fn the_tokenizer_never_panics_on_garbage() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"ab(),'\"[]`-/*0x.eE+; \n\\?:$@X\x80\xff";
        for _ in 0..20_000 {
            let n = (seed % 24) as usize;
            let mut s = Vec::with_capacity(n);
            for _ in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let text = String::from_utf8_lossy(&s);
            let _ = tokenize(&text);
            let _ = canonical_expr(&text, &ExprContext::Default);
            let _ = table_text(&text);
            let _ = canonical_type(&text);
        }
    }
}
