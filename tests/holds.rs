//! Model-based property test of region holds: random sequences of prepares (batches
//! naming random regions), posts, releases, prepared lists and deregistrations run
//! against an engine and against a reference model that says which regions are held
//! — by a transfer until it is released, by a prepared list until it is released, and
//! by each transfer posted from a list as well. Every deregistration must succeed
//! exactly when the model says nothing holds the region, `stats().pins` must count
//! what the model holds, and the engine must end quiescent.

use std::collections::HashMap;

use proptest::prelude::*;
use ringxfer::{Config, Desc, Engine, Error, Handle, ListId, Op, RegionId, Status};

const REGIONS: usize = 4;

/// A transfer's or list's descriptor pairs, as (local, own) region indices.
type Pairs = Vec<(usize, usize)>;
const LEN: u64 = 256;

#[derive(Debug, Clone)]
enum Step {
    /// A transfer between the engine's own regions: pairs of (local, own) region
    /// indices, posted or not.
    Prepare { pairs: Pairs, post: bool },
    /// A prepare whose pair `at` names a deregistered region: refused, holding nothing.
    PrepareStale { pairs: Pairs, at: usize, list: bool },
    /// Post the n-th held transfer if it was not yet.
    Post(usize),
    /// Release the n-th held transfer.
    Release(usize),
    /// A prepared list of these pairs.
    PrepareList(Pairs),
    /// Post the n-th list; the transfer is held like a prepared one.
    PostList(usize),
    /// Release the n-th list.
    ReleaseList(usize),
    /// Try to deregister region n (re-registered right after, under a new id, if it
    /// went).
    Deregister(usize),
}

fn pairs() -> impl Strategy<Value = Pairs> {
    prop::collection::vec((0..REGIONS, 0..REGIONS), 1..6)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (pairs(), any::<bool>()).prop_map(|(pairs, post)| Step::Prepare { pairs, post }),
        1 => (pairs(), any::<usize>(), any::<bool>()).prop_map(|(pairs, at, list)| Step::PrepareStale { pairs, at, list }),
        1 => any::<usize>().prop_map(Step::Post),
        3 => any::<usize>().prop_map(Step::Release),
        1 => pairs().prop_map(Step::PrepareList),
        1 => any::<usize>().prop_map(Step::PostList),
        1 => any::<usize>().prop_map(Step::ReleaseList),
        2 => (0..REGIONS).prop_map(Step::Deregister),
    ]
}

/// Records one side the way the engine counts them: a run of descriptors into one
/// region is one record.
fn records(side: impl Iterator<Item = usize>) -> u64 {
    let mut last = None;
    side.filter(|&r| last.replace(r) != Some(r)).count() as u64
}

/// What a holder holds: its pairs (region indices at the time it was made).
fn held_records(pairs: &[(usize, usize)]) -> u64 {
    records(pairs.iter().map(|p| p.0)) + records(pairs.iter().map(|p| p.1))
}

fn names(pairs: &[(usize, usize)], region: usize) -> bool {
    pairs.iter().any(|&(l, o)| l == region || o == region)
}

fn run(steps: Vec<Step>) {
    let e = Engine::new(Config {
        name: "holds".into(),
        capacity: 8,
        max_descs_per_xfer: 8,
        max_prepared_lists: 4,
        file_workers: 0,
        ..Config::default()
    })
    .unwrap();
    let mut ids: Vec<RegionId> = (0..REGIONS).map(|_| e.alloc_region(LEN as usize).unwrap()).collect();
    let dead = e.alloc_region(LEN as usize).unwrap();
    e.deregister(dead).unwrap();
    // The model: live transfers and lists, with the pairs they name.
    let mut transfers: Vec<(Handle, Pairs, bool)> = Vec::new();
    let mut lists: Vec<(ListId, Pairs)> = Vec::new();
    let descs = |ids: &[RegionId], pairs: &[(usize, usize)]| -> (Vec<Desc>, Vec<Desc>) {
        // Local pieces at the start, own pieces at the end: a pair never overlaps
        // itself, even within one region.
        pairs
            .iter()
            .enumerate()
            .map(|(i, &(l, o))| {
                (
                    Desc::new(ids[l], i as u64 * 8, 8),
                    Desc::new(ids[o], LEN / 2 + i as u64 * 8, 8),
                )
            })
            .unzip()
    };
    for step in steps {
        match step {
            Step::Prepare { pairs, post } => {
                let (local, own) = descs(&ids, &pairs);
                match e.prepare(Op::Write, &local, e.local_peer(), &own, None) {
                    Ok(h) => {
                        if post {
                            e.post(h).unwrap();
                        }
                        transfers.push((h, pairs, post));
                    }
                    Err(Error::RingFull { .. }) => assert_eq!(transfers.len(), 8, "full only when full"),
                    Err(other) => panic!("prepare: {other}"),
                }
            }
            Step::PrepareStale { pairs, at, list } => {
                let (mut local, own) = descs(&ids, &pairs);
                local[at % pairs.len()].region = dead;
                let refused = if list {
                    e.prepare_list(Op::Write, &local, e.local_peer(), &own).map(|_| ())
                } else {
                    e.prepare(Op::Write, &local, e.local_peer(), &own, None).map(|_| ())
                };
                match refused {
                    Err(Error::UnknownRegion { region }) => assert_eq!(region, dead.to_raw()),
                    Err(Error::RingFull { .. } | Error::ListTableFull { .. }) => {}
                    other => panic!("a stale region in a batch: {other:?}"),
                }
            }
            Step::Post(n) if !transfers.is_empty() => {
                let t = n % transfers.len();
                if !transfers[t].2 {
                    e.post(transfers[t].0).unwrap();
                    transfers[t].2 = true;
                }
            }
            Step::Release(n) if !transfers.is_empty() => {
                let (h, _, posted) = transfers.swap_remove(n % transfers.len());
                if posted {
                    assert_eq!(e.status(h).unwrap(), Status::Done);
                }
                e.release(h).unwrap();
            }
            Step::PrepareList(pairs) => {
                let (local, own) = descs(&ids, &pairs);
                match e.prepare_list(Op::Write, &local, e.local_peer(), &own) {
                    Ok(list) => lists.push((list, pairs)),
                    Err(Error::ListTableFull { .. }) => assert_eq!(lists.len(), 4),
                    Err(other) => panic!("prepare_list: {other}"),
                }
            }
            Step::PostList(n) if !lists.is_empty() => {
                let (list, pairs) = &lists[n % lists.len()];
                match e.post_list(*list, None) {
                    Ok(h) => transfers.push((h, pairs.clone(), true)),
                    Err(Error::RingFull { .. }) => assert_eq!(transfers.len(), 8),
                    Err(other) => panic!("post_list: {other}"),
                }
            }
            Step::ReleaseList(n) if !lists.is_empty() => {
                let (list, _) = lists.swap_remove(n % lists.len());
                e.release_list(list).unwrap();
            }
            Step::Deregister(r) => {
                let holders = transfers.iter().filter(|t| names(&t.1, r)).count()
                    + lists.iter().filter(|l| names(&l.1, r)).count();
                match e.deregister(ids[r]) {
                    Ok(()) => {
                        assert_eq!(holders, 0, "region {r} went while {holders} held it");
                        // Refused as unknown; or, when all 8 slots are held, for want of
                        // a slot (a slot is taken before the descriptors are resolved).
                        let refused = e.prepare(
                            Op::Write,
                            &[Desc::new(ids[r], 0, 8)],
                            e.local_peer(),
                            &[Desc::new(ids[r], 8, 8)],
                            None,
                        );
                        match refused {
                            Err(Error::UnknownRegion { .. }) => {}
                            Err(Error::RingFull { .. }) => assert_eq!(transfers.len(), 8, "full only when full"),
                            other => panic!("a deregistered region: {other:?}"),
                        }
                        ids[r] = e.alloc_region(LEN as usize).unwrap();
                    }
                    Err(Error::Busy { users, .. }) => {
                        assert!(holders > 0, "region {r} refused while nothing held it");
                        assert_eq!(users as usize, holders, "region {r}");
                    }
                    Err(other) => panic!("deregister: {other}"),
                }
            }
            _ => {}
        }
        let expected: u64 = transfers.iter().map(|t| held_records(&t.1)).sum::<u64>()
            + lists.iter().map(|l| held_records(&l.1)).sum::<u64>();
        assert_eq!(e.stats().pins, expected, "records held");
    }
    for (h, _, _) in transfers {
        e.release(h).unwrap();
    }
    for (list, _) in lists {
        e.release_list(list).unwrap();
    }
    e.check_quiescent().unwrap();
    let counts: HashMap<_, _> = ids.iter().map(|&id| (id, e.deregister(id))).collect();
    assert!(counts.values().all(Result::is_ok), "{counts:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn deregistration_succeeds_exactly_when_nothing_holds_the_region(steps in prop::collection::vec(step(), 1..80)) {
        run(steps);
    }
}
