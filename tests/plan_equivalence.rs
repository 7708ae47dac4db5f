//! Results must not depend on the plan: scoring each request alone, packing without sharing and
//! tree-packing at several token budgets give the same log-likelihoods (1e-5 nats on the CPU backend)
//! and the same greedy decisions. Also checks the planner's structural invariants and, on the real
//! TruthfulQA requests, the sharing ratio target (naive / computed tokens >= 8).

use lmscore::backend::cpu::Cpu;
use lmscore::config::ModelConfig;
use lmscore::model::Model;
use lmscore::plan::{self, Plan, Request};
use lmscore::score::{run_plan, RequestScore};
use lmscore::testing::{pythia_like, Rng};

fn random_model(seed: u64, parallel_residual: bool) -> Model<Cpu> {
    let config = ModelConfig {
        parallel_residual,
        ..pythia_like(48, 2, 3, 97, 96)
    };
    lmscore::testing::random_model(&Cpu, &config, seed).unwrap()
}

/// Between 1 and `max` tokens.
fn some_tokens(r: &mut Rng, max: usize) -> Vec<u32> {
    let n = 1 + r.below(max);
    r.tokens(n, 97)
}

/// Questions with several choices each, a primer shared by all, choices that are prefixes of each other,
/// duplicates, and one request longer than the window (left truncation).
fn requests(seed: u64) -> Vec<Request> {
    let mut r = Rng(seed);
    let primer = r.tokens(20, 97);
    let mut out = vec![];
    for q in 0..6 {
        let mut context = primer.clone();
        context.extend(some_tokens(&mut r, 15));
        let first_choice = some_tokens(&mut r, 6);
        for c in 0..4 {
            let continuation = match c {
                0 => first_choice.clone(),
                1 => [first_choice.clone(), r.tokens(2, 97)].concat(), // extends choice 0
                _ => some_tokens(&mut r, 6),
            };
            out.push(Request {
                context: context.clone(),
                continuation,
            });
        }
        if q == 2 {
            out.push(out[out.len() - 1].clone()); // an exact duplicate
        }
    }
    out.push(Request {
        context: r.tokens(120, 97),
        continuation: r.tokens(5, 97),
    }); // truncated on the left
    out.push(Request {
        context: vec![5],
        continuation: r.tokens(30, 97),
    });
    out
}

fn score(model: &Model<Cpu>, reqs: &[Request], budget: usize, sharing: bool) -> (Vec<RequestScore>, Plan) {
    let plan = plan::build(reqs, model.config.max_positions, budget, sharing).unwrap();
    (run_plan(&Cpu, model, &plan, |_| {}).unwrap(), plan)
}

fn assert_same(what: &str, reference: &[RequestScore], got: &[RequestScore], tol: f64) {
    for (i, (a, b)) in reference.iter().zip(got).enumerate() {
        assert!(
            (a.logprob - b.logprob).abs() <= tol && a.is_greedy == b.is_greedy && a.n_tokens == b.n_tokens,
            "{what}: request {i}: {a:?} vs alone {b:?}"
        );
    }
}

#[test]
fn scores_do_not_depend_on_the_plan() {
    for parallel in [true, false] {
        let model = random_model(7, parallel);
        let reqs = requests(11);
        let alone: Vec<RequestScore> = reqs.iter().map(|r| score(&model, std::slice::from_ref(r), 4096, false).0[0]).collect();
        let (packed, _) = score(&model, &reqs, 4096, false);
        assert_same("packed without sharing", &alone, &packed, 1e-5);
        for budget in [1, 7, 33, 64, 4096] {
            let (tree, plan) = score(&model, &reqs, budget, true);
            assert_same(&format!("tree, budget {budget}"), &alone, &tree, 1e-5);
            assert!(plan.computed_tokens < plan.naive_tokens, "budget {budget}: the tree shares nothing");
        }
    }
}

#[test]
fn plan_layout_invariants() {
    let reqs = requests(3);
    for budget in [1, 5, 40, 1000] {
        let plan = plan::build(&reqs, 96, budget, true).unwrap();
        let mut targets_per_request = vec![0usize; reqs.len()];
        for (bi, b) in plan.batches.iter().enumerate() {
            assert!(b.tokens.len() <= budget, "batch {bi} has {} tokens, budget {budget}", b.tokens.len());
            assert_eq!(b.tokens.len(), b.layout.positions.len());
            let mut covered = vec![false; b.tokens.len()];
            for s in &b.layout.segments {
                for r in s.q_start..s.q_start + s.q_len {
                    assert!(!covered[r as usize], "batch {bi}: row {r} in two segments");
                    covered[r as usize] = true;
                }
                let own = b.layout.past_len as u32 + s.q_start;
                let mut expected_pos = 0;
                for &(start, len) in &s.ancestors {
                    assert!(
                        start + len <= own,
                        "batch {bi}: ancestor keys {start}+{len} after the segment's own keys {own}"
                    );
                    expected_pos += len;
                }
                assert_eq!(
                    b.layout.positions[s.q_start as usize], expected_pos,
                    "batch {bi}: first position = ancestor tokens"
                );
            }
            assert!(covered.iter().all(|&c| c), "batch {bi}: rows not covered");
            for t in &b.targets {
                targets_per_request[t.request as usize] += 1;
            }
        }
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(targets_per_request[i], r.continuation.len(), "budget {budget}: request {i}");
        }
    }
}

#[test]
fn bad_requests_are_rejected_with_their_index() {
    let empty_cont = [Request {
        context: vec![1],
        continuation: vec![],
    }];
    let e = plan::build(&empty_cont, 96, 100, true).unwrap_err().to_string();
    assert!(e.contains("request 0") && e.contains("empty continuation"), "{e}");
    let too_long = [Request {
        context: vec![1],
        continuation: vec![2; 97],
    }];
    let e = plan::build(&too_long, 96, 100, true).unwrap_err().to_string();
    assert!(e.contains("longer than the 96-token context window"), "{e}");
    assert!(plan::build(&[], 96, 0, true).is_err());
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn truthfulqa_mc1_mc2_share_at_least_eight_fold() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/derived/requests/truthfulqa.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (CI has ../shared beside the repo)"));
    let mut reqs = vec![];
    for line in text.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        let context = ids(&doc["context_ids"]);
        for key in ["mc1_continuation_ids", "mc2_continuation_ids"] {
            for c in doc[key].as_array().unwrap() {
                reqs.push(Request {
                    context: context.clone(),
                    continuation: ids(c),
                });
            }
        }
    }
    assert_eq!(reqs.len(), 9996);
    let plan = plan::build(&reqs, 2048, 4096, true).unwrap();
    let ratio = plan.sharing_ratio();
    println!(
        "TruthfulQA MC1+MC2: naive {} tokens, computed {}, ratio {ratio:.1}, scored rows {}, batches {}, peak cache rows {}",
        plan.naive_tokens,
        plan.computed_tokens,
        plan.scored_rows,
        plan.batches.len(),
        plan.peak_cache_rows
    );
    assert!(ratio >= 8.0, "sharing ratio {ratio:.2} < 8");
    let unshared = plan::build(&reqs, 2048, 4096, false).unwrap();
    assert_eq!(
        unshared.computed_tokens,
        unshared.naive_tokens - reqs.len(),
        "without sharing every input token runs once"
    );
}
