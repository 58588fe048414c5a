//! The built-in task: exact answers, reproducible, fast, held-out family kept apart.

use stepwise_datasets::Split;
use stepwise_datasets::arith::{self, ArithSpec, HELD_OUT_FAMILY, check_solution, generate, generate_problems};

#[test]
fn every_reference_solution_re_evaluates_to_the_answer() {
    let fams = arith::family_names();
    let problems = generate_problems(7, 5000, &fams, 2, 4, 60);
    for p in &problems {
        let got = check_solution(&p.solution).unwrap_or_else(|e| panic!("{e}: {}", p.solution));
        assert_eq!(got, p.answer as f64, "{}", p.solution);
        // Independently of the text: replay the operations.
        let replay = p
            .steps
            .iter()
            .fold(p.start, |acc, (op, b)| op.apply(acc, *b).expect("exact"));
        assert_eq!(replay, p.answer);
        assert!((2..=4).contains(&p.steps.len()));
        assert!(p.answer > 0);
        assert!(p.question.ends_with('?'));
    }
    let ops: std::collections::HashSet<char> = problems
        .iter()
        .flat_map(|p| p.steps.iter().map(|s| s.0.symbol()))
        .collect();
    assert_eq!(ops.len(), 4, "all four operations occur: {ops:?}");
}

#[test]
fn check_solution_catches_wrong_steps_and_answers() {
    assert!(check_solution("3 + 4 = 7. 7 * 2 = 14. So the answer is 14.").is_ok());
    assert!(
        check_solution("3 + 4 = 8. So the answer is 8.")
            .unwrap_err()
            .contains("wrong")
    );
    assert!(
        check_solution("3 + 4 = 7. 9 * 2 = 18. So the answer is 18.")
            .unwrap_err()
            .contains("starts from")
    );
    assert!(
        check_solution("3 + 4 = 7. So the answer is 9.")
            .unwrap_err()
            .contains("differs")
    );
    assert!(check_solution("So the answer is 9.").is_err());
}

#[test]
fn generation_is_reproducible_and_seed_dependent() {
    let spec = ArithSpec {
        seed: 3,
        in_distribution: 300,
        out_of_distribution: 50,
        ..Default::default()
    };
    let a = generate(&spec);
    let b = generate(&spec);
    assert_eq!(a, b);
    let c = generate(&ArithSpec {
        seed: 4,
        ..spec.clone()
    });
    assert_ne!(a, c);
    assert_eq!(a.len(), 350);
    let ids: std::collections::HashSet<_> = a.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), a.len(), "no duplicate problems");
}

#[test]
fn the_held_out_family_is_only_in_test_ood() {
    let ex = generate(&ArithSpec {
        seed: 1,
        in_distribution: 400,
        out_of_distribution: 40,
        ..Default::default()
    });
    let ood_source = format!("arith:{HELD_OUT_FAMILY}");
    for e in &ex {
        assert_eq!(e.source == ood_source, e.split == Some(Split::TestOod), "{e:?}");
    }
    assert_eq!(ex.iter().filter(|e| e.split == Some(Split::TestOod)).count(), 40);
    let fams: std::collections::HashSet<_> = ex.iter().map(|e| e.source.as_str()).collect();
    assert_eq!(fams.len(), arith::family_names().len());
}

#[test]
fn thousands_of_problems_are_cheap() {
    // Not a timing assertion: a sanity bound so a quadratic regression shows up.
    let t = std::time::Instant::now();
    let ex = generate(&ArithSpec {
        seed: 9,
        in_distribution: 10_000,
        out_of_distribution: 1000,
        ..Default::default()
    });
    assert_eq!(ex.len(), 11_000);
    eprintln!("generated 11000 problems in {:?}", t.elapsed());
}

#[test]
#[ignore = "prints samples for a human to read"]
fn print_samples() {
    for p in generate_problems(1, 6, &arith::family_names(), 2, 4, 60) {
        println!("{}\n  -> {}\n", p.question, p.solution);
    }
}

#[test]
fn parse_problem_recovers_every_generated_problem() {
    let problems = generate_problems(21, 2000, &arith::family_names(), 2, 4, 60);
    for p in &problems {
        let parsed = arith::parse_problem(&p.question).unwrap_or_else(|| panic!("not parsed: {}", p.question));
        assert_eq!(parsed.start, p.start, "{}", p.question);
        assert_eq!(parsed.steps, p.steps, "{}", p.question);
        assert_eq!(parsed.answer(), Some(p.answer));
        assert_eq!(parsed.rationale(&parsed.steps).as_deref(), Some(p.solution.as_str()));
    }
    // Inside a prompt with a worked example first, the last problem is the one asked.
    let (a, b) = (&problems[0], &problems[1]);
    let prompt = format!("Q: {}\nA: {}\n\nQ: {}\nA:", a.question, a.solution, b.question);
    assert_eq!(arith::parse_problem(&prompt).unwrap().answer(), Some(b.answer));
    assert_eq!(arith::parse_problem("What is the capital of France?"), None);
}
