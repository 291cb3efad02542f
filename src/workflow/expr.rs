//! A small, safe evaluator for ComfyUI's `ComfyMathExpression` node.
//!
//! ComfyUI evaluates the node's `expression` with the Python `simpleeval` package over the node's
//! inputs `values.a`, `values.b`, ... (named `a`, `b`, ... in the expression; `values` is the list
//! of all of them) and a fixed set of functions. The node then outputs the result three ways:
//! `FLOAT` = float(result), `INT` = int(result) (truncated toward zero) and `BOOL` = its truth.
//!
//! This evaluator accepts the same expression language restricted to numbers, with Python's
//! semantics where they differ from Rust's:
//! - literals: integers (also `0x..`, `0o..`, `0b..`, `_` separators), floats, `True`, `False`;
//! - operators, loosest first: `x if c else y`, `or`, `and`, `not`, comparisons (chainable:
//!   `a < b <= c`), `|`, `^`, `&`, `<<` `>>`, `+` `-`, `*` `/` `//` `%`, unary `+` `-` `~`, `**`;
//!   `/` always gives a float, `//` and `%` round toward negative infinity, `and`/`or` return an
//!   operand, booleans count as 0/1 in arithmetic;
//! - `values[i]` (negative `i` counts from the end);
//! - functions: `sum min max abs round pow sqrt ceil floor log log2 log10 sin cos tan int float`
//!   (`sum`/`min`/`max` take either several numbers or one list; `round(x)` rounds half to even
//!   and gives an int; `pow` refuses exponents above 4000, as ComfyUI does).
//!
//! Nothing else (strings, attribute access, other names) is accepted. Integers are 64-bit; a
//! result that would overflow is an error rather than Python's big integer.

use std::collections::BTreeMap;
use std::fmt;

/// A number as ComfyUI's math node sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Number {
    /// The JSON value of a constant input: numbers and booleans.
    pub fn from_json(v: &serde_json::Value) -> Option<Number> {
        match v {
            serde_json::Value::Bool(b) => Some(Number::Bool(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Some(Number::Int(i)),
                None => n.as_f64().map(Number::Float),
            },
            _ => None,
        }
    }
}

/// The three outputs of `ComfyMathExpression`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MathResult {
    pub float: f64,
    pub int: i64,
    pub boolean: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Val>),
}

impl From<Number> for Val {
    fn from(n: Number) -> Val {
        match n {
            Number::Int(i) => Val::Int(i),
            Number::Float(f) => Val::Float(f),
            Number::Bool(b) => Val::Bool(b),
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Int(i) => write!(f, "{i}"),
            Val::Float(x) => write!(f, "{x}"),
            Val::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Val::List(_) => write!(f, "[...]"),
        }
    }
}

/// Evaluates `expression` with the named inputs (`"a"`, `"b"`, ...; `values` lists them in name
/// order) and returns the node's three outputs.
pub fn evaluate(expression: &str, inputs: &BTreeMap<String, Number>) -> Result<MathResult, String> {
    if expression.trim().is_empty() {
        return Err("expression is empty".into());
    }
    let tokens = lex(expression)?;
    let mut p = Parser { tokens, pos: 0 };
    let ast = p.expr()?;
    if p.pos != p.tokens.len() {
        return Err(format!("unexpected `{}`", p.tokens[p.pos]));
    }
    let mut names: BTreeMap<&str, Val> = BTreeMap::new();
    for (k, v) in inputs {
        names.insert(k.as_str(), Val::from(*v));
    }
    let list = Val::List(inputs.values().map(|v| Val::from(*v)).collect());
    let env = Env { names, list };
    let result = env.eval(&ast)?;
    let (float, int) = match result {
        Val::Int(i) => (i as f64, i),
        Val::Bool(b) => (b as i64 as f64, b as i64),
        Val::Float(x) => {
            if !x.is_finite() {
                return Err(format!("result is not finite: {x}"));
            }
            if x.abs() >= 9.2e18 {
                return Err(format!("result {x} is too large for an INT"));
            }
            (x, x.trunc() as i64)
        }
        Val::List(_) => return Err("result is a list, not a number".into()),
    };
    Ok(MathResult {
        float,
        int,
        boolean: float != 0.0,
    })
}

// ---------------------------------------------------------------------------------------------
// Lexer.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Float(f64),
    Name(String),
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(i) => write!(f, "{i}"),
            Tok::Float(x) => write!(f, "{x}"),
            Tok::Name(n) => write!(f, "{n}"),
            Tok::Op(o) => write!(f, "{o}"),
        }
    }
}

const OPS: &[&str] = &[
    "**", "//", "<<", ">>", "<=", ">=", "==", "!=", "+", "-", "*", "/", "%", "&", "|", "^", "~",
    "<", ">", "(", ")", "[", "]", ",",
];

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let (tok, len) = lex_number(&s[i..])?;
            out.push(tok);
            i += len;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(s[start..i].to_string()));
            continue;
        }
        match OPS.iter().find(|op| s[i..].starts_with(**op)) {
            Some(op) => {
                out.push(Tok::Op(op));
                i += op.len();
            }
            None => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character `{ch}`"));
            }
        }
    }
    Ok(out)
}

fn lex_number(s: &str) -> Result<(Tok, usize), String> {
    let b = s.as_bytes();
    if b.len() > 1 && b[0] == b'0' && matches!(b[1], b'x' | b'X' | b'o' | b'O' | b'b' | b'B') {
        let radix = match b[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            _ => 2,
        };
        let mut i = 2;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let digits: String = s[2..i].chars().filter(|c| *c != '_').collect();
        let v =
            i64::from_str_radix(&digits, radix).map_err(|_| format!("bad number `{}`", &s[..i]))?;
        return Ok((Tok::Int(v), i));
    }
    let mut i = 0;
    let mut is_float = false;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
        i += 1;
    }
    if i < b.len() && b[i] == b'.' {
        is_float = true;
        i += 1;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            is_float = true;
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let text: String = s[..i].chars().filter(|c| *c != '_').collect();
    if is_float {
        let v: f64 = text.parse().map_err(|_| format!("bad number `{text}`"))?;
        Ok((Tok::Float(v), i))
    } else {
        let v: i64 = text
            .parse()
            .map_err(|_| format!("integer `{text}` is too large"))?;
        Ok((Tok::Int(v), i))
    }
}

// ---------------------------------------------------------------------------------------------
// Parser.

#[derive(Clone, Debug)]
enum Expr {
    Lit(Val),
    Name(String),
    Neg(Box<Expr>),
    Pos(Box<Expr>),
    Invert(Box<Expr>),
    Not(Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
    Cmp(Box<Expr>, Vec<(&'static str, Expr)>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    Call(String, Vec<Expr>),
    Index(Box<Expr>, Box<Expr>),
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(o)) if *o == op)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Name(n)) if n == kw)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), String> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(match self.peek() {
                Some(t) => format!("expected `{op}`, found `{t}`"),
                None => format!("expected `{op}` at the end"),
            })
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let e = self.or_expr()?;
        if self.eat_kw("if") {
            let cond = self.or_expr()?;
            if !self.eat_kw("else") {
                return Err("expected `else`".into());
            }
            let otherwise = self.expr()?;
            return Ok(Expr::If {
                cond: Box::new(cond),
                then: Box::new(e),
                otherwise: Box::new(otherwise),
            });
        }
        Ok(e)
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut e = self.and_expr()?;
        while self.eat_kw("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and_expr()?));
        }
        Ok(e)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut e = self.not_expr()?;
        while self.eat_kw("and") {
            e = Expr::And(Box::new(e), Box::new(self.not_expr()?));
        }
        Ok(e)
    }

    fn not_expr(&mut self) -> Result<Expr, String> {
        if self.eat_kw("not") {
            return Ok(Expr::Not(Box::new(self.not_expr()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let first = self.binary(0)?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if matches!(*o, "<" | ">" | "<=" | ">=" | "==" | "!=") => *o,
                Some(Tok::Name(n)) if n == "in" || n == "is" => {
                    return Err(format!("`{n}` is not supported"));
                }
                _ => break,
            };
            self.pos += 1;
            rest.push((op, self.binary(0)?));
        }
        if rest.is_empty() {
            Ok(first)
        } else {
            Ok(Expr::Cmp(Box::new(first), rest))
        }
    }

    /// Binary operators from `|` (level 0) to `* / // %` (level 5), all left-associative.
    fn binary(&mut self, level: usize) -> Result<Expr, String> {
        const LEVELS: &[&[&str]] = &[
            &["|"],
            &["^"],
            &["&"],
            &["<<", ">>"],
            &["+", "-"],
            &["*", "/", "//", "%"],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut e = self.binary(level + 1)?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if LEVELS[level].contains(o) => *o,
                _ => break,
            };
            self.pos += 1;
            let rhs = self.binary(level + 1)?;
            e = Expr::Bin(op, Box::new(e), Box::new(rhs));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat_op("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat_op("+") {
            return Ok(Expr::Pos(Box::new(self.unary()?)));
        }
        if self.eat_op("~") {
            return Ok(Expr::Invert(Box::new(self.unary()?)));
        }
        self.power()
    }

    fn power(&mut self) -> Result<Expr, String> {
        let base = self.postfix()?;
        if self.eat_op("**") {
            // Right-associative and binds tighter than a unary minus on its left only.
            let exp = self.unary()?;
            return Ok(Expr::Bin("**", Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.atom()?;
        loop {
            if self.is_op("(") {
                let Expr::Name(name) = &e else {
                    return Err("only named functions can be called".into());
                };
                let name = name.clone();
                self.pos += 1;
                let mut args = Vec::new();
                if !self.eat_op(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.eat_op(")") {
                            break;
                        }
                        self.expect_op(",")?;
                        if self.eat_op(")") {
                            break;
                        }
                    }
                }
                e = Expr::Call(name, args);
            } else if self.eat_op("[") {
                let idx = self.expr()?;
                self.expect_op("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn atom(&mut self) -> Result<Expr, String> {
        let Some(tok) = self.peek().cloned() else {
            return Err("unexpected end of expression".into());
        };
        self.pos += 1;
        match tok {
            Tok::Int(i) => Ok(Expr::Lit(Val::Int(i))),
            Tok::Float(x) => Ok(Expr::Lit(Val::Float(x))),
            Tok::Name(n) => match n.as_str() {
                "True" => Ok(Expr::Lit(Val::Bool(true))),
                "False" => Ok(Expr::Lit(Val::Bool(false))),
                "and" | "or" | "not" | "if" | "else" | "in" | "is" | "None" | "lambda" => {
                    Err(format!("unexpected `{n}`"))
                }
                _ => Ok(Expr::Name(n)),
            },
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect_op(")")?;
                Ok(e)
            }
            Tok::Op(o) => Err(format!("unexpected `{o}`")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

struct Env<'a> {
    names: BTreeMap<&'a str, Val>,
    list: Val,
}

fn truthy(v: &Val) -> bool {
    match v {
        Val::Int(i) => *i != 0,
        Val::Float(x) => *x != 0.0,
        Val::Bool(b) => *b,
        Val::List(l) => !l.is_empty(),
    }
}

/// Numbers for arithmetic: booleans become ints.
#[derive(Clone, Copy)]
enum N {
    I(i64),
    F(f64),
}

fn num(v: &Val) -> Result<N, String> {
    match v {
        Val::Int(i) => Ok(N::I(*i)),
        Val::Bool(b) => Ok(N::I(*b as i64)),
        Val::Float(x) => Ok(N::F(*x)),
        Val::List(_) => Err("a list cannot be used as a number".into()),
    }
}

fn f(n: N) -> f64 {
    match n {
        N::I(i) => i as f64,
        N::F(x) => x,
    }
}

fn int_only(n: N, op: &str) -> Result<i64, String> {
    match n {
        N::I(i) => Ok(i),
        N::F(_) => Err(format!("`{op}` needs integers")),
    }
}

const OVERFLOW: &str = "integer overflow";

fn floor_div_i(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        return Err("division by zero".into());
    }
    let q = a.checked_div(b).ok_or(OVERFLOW)?;
    Ok(if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    })
}

fn mod_i(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        return Err("modulo by zero".into());
    }
    let r = a.checked_rem(b).ok_or(OVERFLOW)?;
    Ok(if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    })
}

fn mod_f(a: f64, b: f64) -> Result<f64, String> {
    if b == 0.0 {
        return Err("modulo by zero".into());
    }
    let r = a % b;
    Ok(if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
        r + b
    } else {
        r
    })
}

fn pow(a: N, b: N) -> Result<Val, String> {
    match (a, b) {
        (N::I(x), N::I(y)) if y >= 0 => {
            let y = u32::try_from(y).map_err(|_| OVERFLOW.to_string())?;
            x.checked_pow(y)
                .map(Val::Int)
                .ok_or_else(|| OVERFLOW.into())
        }
        (N::I(0), N::I(_)) => Err("0 cannot be raised to a negative power".into()),
        _ => {
            let (x, y) = (f(a), f(b));
            if x == 0.0 && y < 0.0 {
                return Err("0.0 cannot be raised to a negative power".into());
            }
            if x < 0.0 && y.fract() != 0.0 {
                return Err("a negative number to a fractional power is complex".into());
            }
            Ok(Val::Float(x.powf(y)))
        }
    }
}

fn binop(op: &str, a: &Val, b: &Val) -> Result<Val, String> {
    let (x, y) = (num(a)?, num(b)?);
    let both_int = matches!((x, y), (N::I(_), N::I(_)));
    Ok(match op {
        "+" | "-" | "*" if both_int => {
            let (N::I(i), N::I(j)) = (x, y) else {
                unreachable!()
            };
            let r = match op {
                "+" => i.checked_add(j),
                "-" => i.checked_sub(j),
                _ => i.checked_mul(j),
            };
            Val::Int(r.ok_or(OVERFLOW)?)
        }
        "+" => Val::Float(f(x) + f(y)),
        "-" => Val::Float(f(x) - f(y)),
        "*" => Val::Float(f(x) * f(y)),
        "/" => {
            if f(y) == 0.0 {
                return Err("division by zero".into());
            }
            Val::Float(f(x) / f(y))
        }
        "//" => match (x, y) {
            (N::I(i), N::I(j)) => Val::Int(floor_div_i(i, j)?),
            _ => {
                if f(y) == 0.0 {
                    return Err("division by zero".into());
                }
                Val::Float((f(x) / f(y)).floor())
            }
        },
        "%" => match (x, y) {
            (N::I(i), N::I(j)) => Val::Int(mod_i(i, j)?),
            _ => Val::Float(mod_f(f(x), f(y))?),
        },
        "**" => pow(x, y)?,
        "<<" | ">>" => {
            let (i, j) = (int_only(x, op)?, int_only(y, op)?);
            if j < 0 {
                return Err("negative shift count".into());
            }
            if op == ">>" {
                Val::Int(if j >= 64 { i >> 63 } else { i >> j })
            } else {
                let s = u32::try_from(j).map_err(|_| OVERFLOW.to_string())?;
                let r = i.checked_shl(s).ok_or(OVERFLOW)?;
                if r >> s != i {
                    return Err(OVERFLOW.into());
                }
                Val::Int(r)
            }
        }
        "&" | "|" | "^" => {
            let (i, j) = (int_only(x, op)?, int_only(y, op)?);
            Val::Int(match op {
                "&" => i & j,
                "|" => i | j,
                _ => i ^ j,
            })
        }
        _ => return Err(format!("unknown operator `{op}`")),
    })
}

fn compare(op: &str, a: &Val, b: &Val) -> Result<bool, String> {
    let (x, y) = (num(a)?, num(b)?);
    let ord = match (x, y) {
        (N::I(i), N::I(j)) => Some(i.cmp(&j)),
        _ => f(x).partial_cmp(&f(y)),
    };
    use std::cmp::Ordering::*;
    Ok(match op {
        "==" => ord == Some(Equal),
        "!=" => ord != Some(Equal),
        "<" => ord == Some(Less),
        ">" => ord == Some(Greater),
        "<=" => matches!(ord, Some(Less | Equal)),
        ">=" => matches!(ord, Some(Greater | Equal)),
        _ => return Err(format!("unknown comparison `{op}`")),
    })
}

/// Python's round() of a float to an int: half to even.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

fn to_int(x: f64, what: &str) -> Result<Val, String> {
    if !x.is_finite() {
        return Err(format!("cannot convert {x} to an integer in {what}()"));
    }
    if x.abs() >= 9.2e18 {
        return Err(OVERFLOW.into());
    }
    Ok(Val::Int(x as i64))
}

impl Env<'_> {
    fn eval(&self, e: &Expr) -> Result<Val, String> {
        match e {
            Expr::Lit(v) => Ok(v.clone()),
            Expr::Name(n) if n == "values" => Ok(self.list.clone()),
            Expr::Name(n) => {
                self.names.get(n.as_str()).cloned().ok_or_else(|| {
                    format!("name `{n}` is not defined (connect input `values.{n}`)")
                })
            }
            Expr::Neg(a) => match num(&self.eval(a)?)? {
                N::I(i) => Ok(Val::Int(i.checked_neg().ok_or(OVERFLOW)?)),
                N::F(x) => Ok(Val::Float(-x)),
            },
            Expr::Pos(a) => match num(&self.eval(a)?)? {
                N::I(i) => Ok(Val::Int(i)),
                N::F(x) => Ok(Val::Float(x)),
            },
            Expr::Invert(a) => Ok(Val::Int(!int_only(num(&self.eval(a)?)?, "~")?)),
            Expr::Not(a) => Ok(Val::Bool(!truthy(&self.eval(a)?))),
            Expr::Bin(op, a, b) => binop(op, &self.eval(a)?, &self.eval(b)?),
            Expr::Cmp(first, rest) => {
                let mut left = self.eval(first)?;
                for (op, rhs) in rest {
                    let right = self.eval(rhs)?;
                    if !compare(op, &left, &right)? {
                        return Ok(Val::Bool(false));
                    }
                    left = right;
                }
                Ok(Val::Bool(true))
            }
            Expr::And(a, b) => {
                let l = self.eval(a)?;
                if truthy(&l) {
                    self.eval(b)
                } else {
                    Ok(l)
                }
            }
            Expr::Or(a, b) => {
                let l = self.eval(a)?;
                if truthy(&l) {
                    Ok(l)
                } else {
                    self.eval(b)
                }
            }
            Expr::If {
                cond,
                then,
                otherwise,
            } => {
                if truthy(&self.eval(cond)?) {
                    self.eval(then)
                } else {
                    self.eval(otherwise)
                }
            }
            Expr::Index(list, idx) => {
                let Val::List(items) = self.eval(list)? else {
                    return Err("only `values` can be indexed".into());
                };
                let i = match num(&self.eval(idx)?)? {
                    N::I(i) => i,
                    N::F(_) => return Err("list indices must be integers".into()),
                };
                let len = items.len() as i64;
                let j = if i < 0 { i + len } else { i };
                if j < 0 || j >= len {
                    return Err(format!("index {i} is out of range"));
                }
                Ok(items[j as usize].clone())
            }
            Expr::Call(name, args) => {
                let args = args
                    .iter()
                    .map(|a| self.eval(a))
                    .collect::<Result<Vec<_>, _>>()?;
                call(name, args)
            }
        }
    }
}

fn call(name: &str, args: Vec<Val>) -> Result<Val, String> {
    let n_args = |n: usize| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "{name}() takes {n} argument(s), got {}",
                args.len()
            ))
        }
    };
    // sum/min/max take either one list or several numbers.
    let spread = |args: Vec<Val>| -> Vec<Val> {
        match args.as_slice() {
            [Val::List(items)] => items.clone(),
            _ => args,
        }
    };
    let unary_f = |g: fn(f64) -> f64| -> Result<Val, String> {
        n_args(1)?;
        Ok(Val::Float(g(f(num(&args[0])?))))
    };
    match name {
        "sum" => {
            let mut acc = Val::Int(0);
            for v in spread(args) {
                acc = binop("+", &acc, &v)?;
            }
            Ok(acc)
        }
        "min" | "max" => {
            let items = spread(args);
            let mut best: Option<Val> = None;
            for v in items {
                num(&v)?;
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let better = if name == "min" {
                            compare("<", &v, &b)?
                        } else {
                            compare(">", &v, &b)?
                        };
                        if better {
                            v
                        } else {
                            b
                        }
                    }
                });
            }
            best.ok_or_else(|| format!("{name}() of nothing"))
        }
        "abs" => {
            n_args(1)?;
            match num(&args[0])? {
                N::I(i) => Ok(Val::Int(i.checked_abs().ok_or(OVERFLOW)?)),
                N::F(x) => Ok(Val::Float(x.abs())),
            }
        }
        "round" => match args.len() {
            1 => match num(&args[0])? {
                N::I(i) => Ok(Val::Int(i)),
                N::F(x) => to_int(round_half_even(x), "round"),
            },
            2 => {
                let digits = match num(&args[1])? {
                    N::I(d) => d,
                    N::F(_) => return Err("round() digits must be an integer".into()),
                };
                match num(&args[0])? {
                    N::I(i) if digits >= 0 => Ok(Val::Int(i)),
                    x => {
                        let scale = 10f64.powi(digits.clamp(-300, 300) as i32);
                        Ok(Val::Float(round_half_even(f(x) * scale) / scale))
                    }
                }
            }
            n => Err(format!("round() takes 1 or 2 arguments, got {n}")),
        },
        "pow" => {
            n_args(2)?;
            let (b, e) = (num(&args[0])?, num(&args[1])?);
            if f(e).abs() > 4000.0 {
                return Err(format!("exponent {} exceeds 4000", f(e)));
            }
            pow(b, e)
        }
        "sqrt" => {
            n_args(1)?;
            let x = f(num(&args[0])?);
            if x < 0.0 {
                return Err("sqrt() of a negative number".into());
            }
            Ok(Val::Float(x.sqrt()))
        }
        "ceil" | "floor" => {
            n_args(1)?;
            match num(&args[0])? {
                N::I(i) => Ok(Val::Int(i)),
                N::F(x) => to_int(if name == "ceil" { x.ceil() } else { x.floor() }, name),
            }
        }
        "log" | "log2" | "log10" => {
            let x = f(num(args
                .first()
                .ok_or(format!("{name}() needs an argument"))?)?);
            if x <= 0.0 {
                return Err(format!("{name}() of a number that is not positive"));
            }
            match (name, args.len()) {
                ("log", 1) => Ok(Val::Float(x.ln())),
                ("log", 2) => {
                    let base = f(num(&args[1])?);
                    if base <= 0.0 || base == 1.0 {
                        return Err("log() base must be positive and not 1".into());
                    }
                    Ok(Val::Float(x.ln() / base.ln()))
                }
                ("log2", 1) => Ok(Val::Float(x.log2())),
                ("log10", 1) => Ok(Val::Float(x.log10())),
                _ => Err(format!("{name}() takes 1 argument")),
            }
        }
        "sin" => unary_f(f64::sin),
        "cos" => unary_f(f64::cos),
        "tan" => unary_f(f64::tan),
        "int" => {
            n_args(1)?;
            match num(&args[0])? {
                N::I(i) => Ok(Val::Int(i)),
                N::F(x) => to_int(x.trunc(), "int"),
            }
        }
        "float" => unary_f(|x| x),
        _ => Err(format!("function `{name}` is not available")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(e: &str, vars: &[(&str, Number)]) -> Result<MathResult, String> {
        let m = vars.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        evaluate(e, &m)
    }

    fn int(e: &str) -> i64 {
        ev(e, &[]).unwrap().int
    }

    fn float(e: &str) -> f64 {
        ev(e, &[]).unwrap().float
    }

    #[test]
    fn wan22_frame_count() {
        let r = ev(
            "floor (a * b + 1)",
            &[("a", Number::Int(5)), ("b", Number::Int(16))],
        )
        .unwrap();
        assert_eq!(r.int, 81);
        assert_eq!(r.float, 81.0);
        assert!(r.boolean);
        let r = ev(
            "floor (a * b + 1)",
            &[("a", Number::Float(3.3)), ("b", Number::Float(16.0))],
        )
        .unwrap();
        assert_eq!(r.int, 53);
    }

    #[test]
    fn python_semantics() {
        assert_eq!(int("7 // 2"), 3);
        assert_eq!(int("-7 // 2"), -4);
        assert_eq!(int("-7 % 3"), 2);
        assert_eq!(int("7 % -3"), -2);
        assert_eq!(float("7 / 2"), 3.5);
        assert_eq!(int("-2 ** 2"), -4);
        assert_eq!(int("2 ** 3 ** 2"), 512);
        assert_eq!(float("2 ** -1"), 0.5);
        assert_eq!(int("round(2.5)"), 2);
        assert_eq!(int("round(3.5)"), 4);
        assert_eq!(int("round(-2.5)"), -2);
        assert_eq!(int("int(-3.7)"), -3);
        assert_eq!(int("1 + True"), 2);
        assert_eq!(int("1 < 2 < 3"), 1);
        assert_eq!(int("3 > 2 > 2"), 0);
        assert_eq!(int("0 or 5"), 5);
        assert_eq!(int("2 and 0"), 0);
        assert_eq!(int("10 if 1 > 2 else 20"), 20);
        assert_eq!(int("not 0"), 1);
        assert_eq!(int("0x10 + 0b11 + 1_000"), 1019);
        assert_eq!(float("1e3 + .5"), 1000.5);
        assert_eq!(int("1 << 4 | 1"), 17);
        assert_eq!(int("~5"), -6);
        assert!((float("sqrt(2) ** 2") - 2.0).abs() < 1e-12);
        assert_eq!(float("log(8, 2)"), 3.0);
        assert_eq!(int("ceil(2.1) + floor(-2.1)"), 0);
    }

    #[test]
    fn names_lists_and_functions() {
        let vars = [
            ("a", Number::Int(3)),
            ("b", Number::Float(1.5)),
            ("c", Number::Bool(true)),
        ];
        assert_eq!(ev("sum(values)", &vars).unwrap().float, 5.5);
        assert_eq!(ev("sum(a, b)", &vars).unwrap().float, 4.5);
        assert_eq!(ev("max(values)", &vars).unwrap().int, 3);
        assert_eq!(ev("min(a, b)", &vars).unwrap().float, 1.5);
        assert_eq!(ev("values[-1] + values[0]", &vars).unwrap().int, 4);
        assert!(!ev("a > 2048", &vars).unwrap().boolean);
        assert_eq!(ev("pow(a, 2)", &vars).unwrap().int, 9);
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "a",
            "1 +",
            "(1",
            "__import__('os')",
            "x.y",
            "'s'",
            "1 / 0",
            "5 // 0",
            "pow(2, 5000)",
            "sqrt(-1)",
            "values",
            "9223372036854775807 + 1",
            "1 in values",
        ] {
            assert!(ev(bad, &[]).is_err(), "{bad:?} should fail");
        }
    }
}
