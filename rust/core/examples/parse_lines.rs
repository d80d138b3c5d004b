//! Parses and validates every line of a file of share events, as a batch's reader does
//! (`event::parse_line`), and keeps each event compact (`Compact::of`): the parse path's
//! instructions an event, counted under callgrind without Python around it.
//!
//!     cargo run --release --example parse_lines -- events.jsonl [passes]

use std::hint::black_box;

use viralwatch_core::event::{parse_line, Compact, Judge};

/// Python's judgements, never asked of the simulator's lines (plain ASCII ids, RFC 3339
/// or epoch times): asked, they say so.
struct NoJudge;

impl Judge for NoJudge {
    fn is_printable(&mut self, text: &str) -> bool {
        panic!("asked whether {text:?} is printable")
    }
    fn parse_ts_text(&mut self, text: &str) -> Result<i64, String> {
        Err(format!("asked the time of {text:?}"))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("a file of events, one a line");
    let passes: usize = args.next().map_or(1, |n| n.parse().expect("a count"));
    let data = std::fs::read(path).expect("readable");
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let (mut ok, mut rejected) = (0usize, 0usize);
    for _ in 0..passes {
        let (o, r) = parse_all(&lines);
        (ok, rejected) = (ok + o, rejected + r);
    }
    println!("{} lines, {ok} events, {rejected} rejected", lines.len());
}

/// Each line parsed and its event kept compact: events and rejections. Apart from `main`
/// so that callgrind can count it alone (`--toggle-collect='*parse_all*'`).
#[inline(never)]
fn parse_all(lines: &[&[u8]]) -> (usize, usize) {
    let (mut ok, mut rejected) = (0usize, 0usize);
    for line in lines {
        match parse_line(black_box(line), &mut NoJudge) {
            Ok(ref ev) => {
                ok += 1;
                black_box(Compact::of(ev));
            }
            Err(_) => rejected += 1,
        }
    }
    (ok, rejected)
}
