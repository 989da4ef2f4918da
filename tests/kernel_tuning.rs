//! `kernel-tuning/nic-queues.sh` refuses bad input before it plans anything (a bad CPU list once
//! printed an error and went on, exit 0, with a plan for the CPUs it could read).

use std::process::Command;

fn nic_queues(args: &[&str]) -> std::process::Output {
    Command::new("bash").arg("kernel-tuning/nic-queues.sh").args(args).output().expect("run bash")
}

#[test]
fn bad_cpu_lists_are_usage_errors_and_help_works() {
    for bad in [&["--cpus", "0,foo", "lo"][..], &["--cpus"][..]] {
        let o = nic_queues(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty(), "{bad:?} planned something: {}", String::from_utf8_lossy(&o.stdout));
    }
    let o = nic_queues(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--apply"));
}
