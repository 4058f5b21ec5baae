//! The values a Rhai script passes into the Script Runtime API: any value
//! (unit, booleans, integers to the extremes, floats with NaN and
//! infinities, strings with any character, characters, arrays and maps
//! nested) in any argument of `ExternalSystem.CachedCall` / `Call`,
//! `Database.CachedWrite` / `Write` / `Query`, `Notify.Send` and
//! `Tracking.Status`, run by the real runtime of a real site. A script gets
//! a value or a clear error; the runtime never panics.
#![no_main]

use std::{fmt::Write as _, sync::OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sitelink_fuzz::world;

#[derive(Arbitrary, Debug)]
enum Val {
    Unit,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Char(char),
    Array(Vec<Val>),
    Map(Vec<(String, Val)>),
}

/// `c` inside a Rhai string or character literal.
fn escape(out: &mut String, c: char, quote: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if !c.is_control() => out.push(c),
        c if (c as u32) <= 0xFFFF => {
            let _ = write!(out, "\\u{:04X}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08X}", c as u32);
        }
    }
}

fn string(out: &mut String, s: &str) {
    out.push('"');
    s.chars().for_each(|c| escape(out, c, '"'));
    out.push('"');
}

/// `v` as a Rhai expression.
fn render(out: &mut String, v: &Val, depth: usize) {
    if depth > 8 {
        out.push_str("()");
        return;
    }
    match v {
        Val::Unit => out.push_str("()"),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Int(i64::MIN) => out.push_str("(-9223372036854775807 - 1)"),
        Val::Int(i) => {
            let _ = write!(out, "({i})");
        }
        Val::Float(f) if f.is_nan() => out.push_str("(0.0 / 0.0)"),
        Val::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 {
            "(1.0 / 0.0)"
        } else {
            "(-1.0 / 0.0)"
        }),
        Val::Float(f) => {
            let _ = write!(out, "({f:?})");
        }
        Val::Str(s) => string(out, s),
        Val::Char(c) => {
            out.push('\'');
            escape(out, *c, '\'');
            out.push('\'');
        }
        Val::Array(a) => {
            out.push('[');
            for v in a {
                render(out, v, depth + 1);
                out.push(',');
            }
            out.push(']');
        }
        Val::Map(m) => {
            out.push_str("#{");
            for (k, v) in m {
                string(out, k);
                out.push(':');
                render(out, v, depth + 1);
                out.push(',');
            }
            out.push('}');
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    call: u8,
    a: Val,
    b: Val,
}

fuzz_target!(|input: Input| {
    static WORLD: OnceLock<world::SiteWorld> = OnceLock::new();
    let w = WORLD.get_or_init(world::SiteWorld::start);
    let (mut a, mut b) = (String::new(), String::new());
    render(&mut a, &input.a, 0);
    render(&mut b, &input.b, 0);
    let source = match input.call % 12 {
        0 => format!(r#"ExternalSystem.CachedCall("erp", "postOrder", {a})"#),
        1 => format!(r#"ExternalSystem.Call("erp", "postOrder", {a})"#),
        2 => format!(r#"ExternalSystem.CachedCall({a}, {b}, #{{}})"#),
        3 => format!(r#"Database.CachedWrite("plant", "INSERT INTO t(v) VALUES (?)", {a})"#),
        4 => format!(r#"Database.Write("plant", "INSERT INTO t(v) VALUES (?)", {a})"#),
        5 => format!(r#"Database.Query("plant", "SELECT ? AS v", {a})"#),
        6 => format!(r#"Database.CachedWrite({a}, {b}, [])"#),
        7 => format!(r#"Notify.Send({a}, "subject", {b})"#),
        8 => format!(r#"Notify.Send("ops", {a}, {b})"#),
        9 => format!(r#"Tracking.Status({a})"#),
        10 => format!(r#"Tracking.Status(ExternalSystem.CachedCall("erp", "postOrder", {a}))"#),
        _ => format!(r#"Database.Query({a}, {b}, [])"#),
    };
    // Ok (a value) or Err (a compile or runtime error naming the problem):
    // both are answers; a panic aborts the fuzzer.
    let answer =
        w.rt.block_on(w.runtime.run_source("fuzz", "line1", &source));
    if let Err(e) = answer {
        assert!(!e.to_string().is_empty());
    }
});
