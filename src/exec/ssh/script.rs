//! The shell scripts the SSH executor runs on a host, and the files it writes there.
//! Pure functions: no I/O, unit-tested here.
//!
//! User text (commands, environment values) is never parsed by a shell other than the
//! job's own: commands and the environment are files written byte for byte through the
//! channel's standard input (in a container, the commands reach `sh -c` as one argument
//! read from the job file); the only user words in a script (working directory, image)
//! are single-quoted by [`shell_quote`]. The run's UID, the one other value in the
//! scripts, is checked by [`check_uid`] to hold only letters, digits and `-`.

use crate::exec::ExecError;

/// Exit code recorded for a job whose runner is gone without recording one (the host
/// restarted, the runner was killed), and for a job killed by `stop` after the grace period.
pub const VANISHED_EXIT_CODE: i32 = 137;

/// Files of a job directory, as written by the executor.
pub const JOB_FILE: &str = "job.sh";
pub const ENV_FILE: &str = "env";
pub const RUNNER_FILE: &str = "run.sh";

/// The run's UID must be usable as a directory and container name as it is.
pub fn check_uid(uid: &str) -> Result<(), ExecError> {
    let ok = !uid.is_empty() && uid.len() <= 64 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ExecError::Other(format!("run UID {uid:?} is not usable as a job directory name")))
    }
}

/// `s` as one shell word, taken literally by any POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command line that runs `script` with `sh`, whatever the user's login shell.
pub fn remote(script: &str) -> String {
    format!("sh -c {}", shell_quote(script))
}

/// The container name of a run's job.
pub fn container_name(uid: &str) -> String {
    format!("kpool-{uid}")
}

/// The job: the commands in order in one `sh`; the first failing command ends the job
/// with its exit code (`set -e`).
pub fn job_script(commands: &[String]) -> String {
    let mut s = String::from("set -e\n");
    for c in commands {
        s.push_str(c);
        s.push('\n');
    }
    s
}

/// The environment file: one `export NAME='value'` per variable; names are checked
/// shell names (see [`crate::exec::env`]).
pub fn env_file(env: &[(String, String)]) -> String {
    env.iter().map(|(k, v)| format!("export {k}={}\n", shell_quote(v))).collect()
}

/// How the job's commands are run in a container.
#[derive(Clone, Debug, PartialEq)]
pub struct Container<'a> {
    pub image: &'a str,
    /// Pass the host's GPUs (`--gpus all`); set when the host has `nvidia-smi`.
    pub gpus: bool,
    /// Whether the run has commands (else the image's own command runs).
    pub commands: bool,
}

/// The `docker run` arguments of a job, up to and excluding the script itself, which the
/// runner appends from the job file (`sh -c "$(cat job.sh)"`); without commands the image
/// runs its own entrypoint and command. Variables are passed by name (`-e NAME`): docker
/// takes their values from the runner's environment, so no value is ever on a command line.
pub fn docker_args(uid: &str, c: &Container, env_names: &[&str], working_dir: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["docker", "run", "--rm", "--name"].iter().map(|s| s.to_string()).collect();
    args.push(container_name(uid));
    if c.gpus {
        args.extend(["--gpus".to_string(), "all".to_string()]);
    }
    let mut seen = std::collections::HashSet::new();
    for name in env_names.iter().filter(|n| seen.insert(**n)) {
        args.extend(["-e".to_string(), name.to_string()]);
    }
    if let Some(dir) = working_dir {
        args.extend(["-w".to_string(), dir.to_string()]);
    }
    // The end of docker's options: whatever the image says, it is never read as one.
    args.push("--".to_string());
    args.push(c.image.to_string());
    if c.commands {
        args.extend(["sh".to_string(), "-c".to_string()]);
    }
    args
}

/// Checks that `image` is one image reference and nothing else for docker: not empty, not
/// starting with `-` (docker would read it as an option), without whitespace or control
/// characters (which no image reference has). [`docker_args`] ends docker's options with
/// `--` anyway.
pub fn check_image(image: &str) -> Result<(), String> {
    let why = if image.is_empty() {
        "is empty"
    } else if image.starts_with('-') {
        "starts with '-', which docker would take for an option"
    } else if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(format!("spec.image {image:?} {why}: it must be an image reference such as ubuntu:24.04"))
}

/// The `docker run` line of the runner: [`docker_args`] quoted, then the job file's text.
pub fn docker_line(uid: &str, c: &Container, env_names: &[&str], working_dir: Option<&str>) -> String {
    let words: Vec<String> = docker_args(uid, c, env_names, working_dir).iter().map(|a| quote_if_needed(a)).collect();
    if c.commands {
        format!("{} \"$(cat \"$1\")\"", words.join(" "))
    } else {
        words.join(" ")
    }
}

/// `word` as it is when a POSIX shell takes it literally, else single-quoted.
pub fn quote_if_needed(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,".contains(c));
    if plain {
        word.to_string()
    } else {
        shell_quote(word)
    }
}

fn dir_line(uid: &str) -> String {
    format!("D=\"$HOME/.kpool/runs/{uid}\"\n")
}

/// The runner (`run.sh`), started detached by [`launch_script`]: takes the job's lock,
/// records its pid (which is also the job's process group), runs the job with its output
/// in `output.log`, and records the exit code. The job's positional parameter `$1` is the
/// job file's path, set before the environment file is read, so no variable of the run can
/// change which file runs.
pub fn runner_script(uid: &str, working_dir: Option<&str>, container: Option<&str>) -> String {
    let mut s = String::from("# kpool runner of one run; written by kpool, started detached from any SSH session.\n");
    s.push_str(&dir_line(uid));
    s.push_str(
        r#"cd "$D" || exit 1
mkdir "$D/lock" 2>/dev/null || exit 0
cat /proc/sys/kernel/random/boot_id > "$D/boot_id" 2>/dev/null
echo $$ > "$D/.pid.$$" && mv -f "$D/.pid.$$" "$D/pid"
trap 'kpool_stopping=1' TERM INT
(
  set -- "$D/job.sh"
"#,
    );
    match container {
        Some(line) => {
            s.push_str(&format!("  echo {} > \"$D/container\"\n", container_name(uid)));
            s.push_str("  . \"$D/env\" || exit 1\n");
            s.push_str(&format!("  exec {line}\n"));
        }
        None => {
            s.push_str("  cd \"$HOME\" || exit 1\n");
            if let Some(dir) = working_dir {
                s.push_str(&format!("  cd {} || exit 1\n", shell_quote(dir)));
            }
            s.push_str("  . \"$D/env\" || exit 1\n  exec sh \"$1\"\n");
        }
    }
    s.push_str(
        r#") >> "$D/output.log" 2>&1 < /dev/null
code=$?
trap '' TERM
kill -TERM "-$$" 2>/dev/null
echo "$code" > "$D/.exit_code.$$" && mv -f "$D/.exit_code.$$" "$D/exit_code"
"#,
    );
    s
}

/// Says whether the job has started (`started`), else what the host offers (`setsid`,
/// `nohup`, `docker`, `dockerd` when its daemon answers, `nvidia`); ends with `ok`.
pub fn inspect_script(uid: &str, image: bool) -> String {
    let mut s = dir_line(uid);
    s.push_str(
        r#"if [ -e "$D/exit_code" ] || [ -e "$D/pid" ]; then echo started; exit 0; fi
command -v setsid >/dev/null 2>&1 && echo setsid
command -v nohup >/dev/null 2>&1 && echo nohup
"#,
    );
    if image {
        s.push_str(
            r#"if command -v docker >/dev/null 2>&1; then
  echo docker
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && echo dockerd
fi
command -v nvidia-smi >/dev/null 2>&1 && echo nvidia
"#,
        );
    }
    s.push_str("echo ok\n");
    s
}

/// How long the directory of a finished job (its output, exit code) stays on the host.
pub const JOB_RETENTION_DAYS: u32 = 7;

/// Writes standard input to `file` of the job directory (created private), atomically.
pub fn write_script(uid: &str, file: &str) -> String {
    format!(
        "{}umask 077\nmkdir -p \"$D\" && cat > \"$D/.{file}.$$\" && mv -f \"$D/.{file}.$$\" \"$D/{file}\"\n",
        dir_line(uid)
    )
}

/// Starts the runner detached (own session, no terminal, standard streams away from the
/// SSH channel) unless the job has started, and waits until it has recorded its pid.
///
/// Before starting, it removes the directories of jobs that ended (their `exit_code` is
/// there) more than [`JOB_RETENTION_DAYS`] days ago; directories of running jobs stay.
pub fn launch_script(uid: &str) -> String {
    let mut s = dir_line(uid);
    s.push_str(&format!(
        r#"for old in "${{D%/*}}"/*/; do
  old=${{old%/}}
  [ "$old" != "$D" ] && [ -e "$old/exit_code" ] || continue
  [ -n "$(find "$old/exit_code" -mtime +{JOB_RETENTION_DAYS} 2>/dev/null)" ] && rm -rf "$old"
done
"#
    ));
    s.push_str(
        r#"cd "$D" || exit 1
if [ -e exit_code ] || [ -e pid ]; then exit 0; fi
setsid nohup sh "$D/run.sh" < /dev/null > /dev/null 2>&1 &
i=0
while [ ! -e pid ] && [ ! -e exit_code ]; do
  if [ "$i" -ge 100 ]; then echo "the job's runner did not start within 10 seconds" >&2; exit 1; fi
  i=$((i+1))
  sleep 0.1 2>/dev/null || sleep 1
done
"#,
    );
    s
}

/// Functions of the status and stop scripts: `runner_alive` (the recorded pid is this
/// job's runner, in this boot), `leader_foreign` (the pid now belongs to another live
/// program: the number was reused) and `group_alive` (a live, non-zombie process is in
/// the job's process group).
const PRELUDE: &str = r#"p=$(cat "$D/pid" 2>/dev/null)
case "$p" in ''|*[!0-9]*|0|1) p= ;; esac
same_boot() {
  [ ! -r /proc/sys/kernel/random/boot_id ] || [ ! -e "$D/boot_id" ] ||
    [ "$(cat "$D/boot_id")" = "$(cat /proc/sys/kernel/random/boot_id)" ]
}
runner_alive() {
  [ -n "$p" ] && same_boot && kill -0 "$p" 2>/dev/null || return 1
  [ ! -d /proc/self ] || grep -q "@UID@/run.sh" "/proc/$p/cmdline" 2>/dev/null
}
leader_foreign() {
  [ -d "/proc/$p" ] || return 1
  [ "$(head -c 1 "/proc/$p/cmdline" 2>/dev/null | wc -c)" -gt 0 ] || return 1
  if grep -q "@UID@/run.sh" "/proc/$p/cmdline" 2>/dev/null; then return 1; fi
  return 0
}
group_alive() {
  [ -n "$p" ] && same_boot || return 1
  if [ -r /proc/self/stat ]; then
    for f in /proc/[0-9]*/stat; do
      { read -r s < "$f"; } 2>/dev/null || continue
      s=${s##*[)] }
      set -- $s
      [ "$3" = "$p" ] && [ "$1" != Z ] && return 0
    done
    return 1
  fi
  kill -0 "-$p" 2>/dev/null
}
record_vanished() {
  (set -C; echo @CODE@ > "$D/exit_code") 2>/dev/null &&
    echo "kpool: $1; recorded exit code @CODE@" >> "$D/output.log"
}
"#;

fn prelude(uid: &str) -> String {
    format!("{}{}", dir_line(uid), PRELUDE.replace("@UID@", uid).replace("@CODE@", &VANISHED_EXIT_CODE.to_string()))
}

/// Prints `exited CODE`, `running`, `vanished CODE` (the runner is gone without an exit
/// code: recorded as [`VANISHED_EXIT_CODE`]) or `absent` (never started).
pub fn status_script(uid: &str) -> String {
    let mut s = prelude(uid);
    s.push_str(
        r#"if [ -e "$D/exit_code" ]; then echo "exited $(cat "$D/exit_code")"; exit 0; fi
if [ -z "$p" ]; then echo absent; exit 0; fi
if runner_alive; then echo running; exit 0; fi
if [ -e "$D/exit_code" ]; then echo "exited $(cat "$D/exit_code")"; exit 0; fi
record_vanished "the job's runner (pid $p) is gone without an exit code (the host restarted or the process was killed)"
echo "vanished $(cat "$D/exit_code")"
"#,
    );
    s
}

/// Stops the job unless it has ended: `docker stop` of its container, else SIGTERM to its
/// process group, SIGKILL after `grace_secs`; the runner records the exit code, or this
/// script records [`VANISHED_EXIT_CODE`] when nothing did. Prints `exited CODE` (it had
/// ended), `stopped CODE` or `absent` (never started: nothing to do).
pub fn stop_script(uid: &str, grace_secs: u64) -> String {
    let mut s = prelude(uid);
    let tenths = grace_secs.saturating_mul(10).max(1);
    s.push_str(&format!(
        r#"if [ -e "$D/exit_code" ]; then echo "exited $(cat "$D/exit_code")"; exit 0; fi
if [ -z "$p" ]; then echo absent; exit 0; fi
wait_group() {{
  i=0
  while group_alive && [ "$i" -lt "$1" ]; do i=$((i+1)); sleep 0.1 2>/dev/null || sleep 1; done
}}
if runner_alive; then
  if [ -e "$D/container" ] && command -v docker >/dev/null 2>&1; then
    docker stop -t {grace_secs} {name} > /dev/null 2>&1
    wait_group 50
  fi
  kill -TERM "-$p" 2>/dev/null
  wait_group {tenths}
fi
if group_alive && ! leader_foreign; then
  kill -KILL "-$p" 2>/dev/null
  wait_group 50
  if group_alive; then echo "processes of the job's process group $p are still alive after SIGKILL" >&2; exit 4; fi
fi
record_vanished "the job was killed by stop"
echo "stopped $(cat "$D/exit_code")"
"#,
        name = container_name(uid),
    ));
    s
}

/// Prints up to `max` bytes of `output.log` from byte `from` on; exits 3 when the job
/// directory does not exist.
pub fn logs_script(uid: &str, from: u64, max: usize) -> String {
    let mut s = dir_line(uid);
    s.push_str(&format!(
        r#"if [ ! -d "$D" ]; then echo "no job directory" >&2; exit 3; fi
if [ ! -e "$D/output.log" ]; then exit 0; fi
tail -c +{start} "$D/output.log" | head -c {max}
"#,
        start = from.saturating_add(1),
    ));
    s
}

/// What `status_script` and `stop_script` said.
#[derive(Clone, Debug, PartialEq)]
pub enum Reported {
    Running,
    Exited(i32),
    Vanished(i32),
    Stopped(i32),
    Absent,
}

pub fn parse_report(out: &str) -> Result<Reported, String> {
    let line = out.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default();
    let code = |rest: &str| rest.trim().parse::<i32>().map_err(|_| format!("unexpected exit code {:?}", rest.trim()));
    match line.split_once(' ') {
        _ if line == "running" => Ok(Reported::Running),
        _ if line == "absent" => Ok(Reported::Absent),
        Some(("exited", rest)) => code(rest).map(Reported::Exited),
        Some(("vanished", rest)) => code(rest).map(Reported::Vanished),
        Some(("stopped", rest)) => code(rest).map(Reported::Stopped),
        _ => Err(format!("unexpected answer {line:?}")),
    }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 sequence: a character
/// cut by a chunk boundary is left for the next read. Invalid bytes are passed on.
pub fn utf8_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    match std::str::from_utf8(bytes) {
        Ok(_) => return len,
        Err(e) if e.error_len().is_none() => return e.valid_up_to(),
        Err(_) => {}
    }
    for start in (len.saturating_sub(3)..len).rev() {
        let b = bytes[start];
        if b & 0xC0 == 0x80 {
            continue;
        }
        if (0xC2..=0xF4).contains(&b) {
            let need = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else {
                2
            };
            if len - start < need {
                return start;
            }
        }
        return len;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docker_command_line() {
        let uid = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc";
        let c = Container { image: "pytorch/pytorch:2.3-cuda12", gpus: true, commands: true };
        assert_eq!(
            docker_line(uid, &c, &["WANDB_KEY", "A", "WANDB_KEY"], Some("/work dir")),
            "docker run --rm --name kpool-0f1e2d3c-aaaa-bbbb-cccc-123456789abc --gpus all -e WANDB_KEY -e A \
             -w '/work dir' -- pytorch/pytorch:2.3-cuda12 sh -c \"$(cat \"$1\")\""
        );
        let c = Container { image: "alpine", gpus: false, commands: true };
        assert_eq!(
            docker_line("u1", &c, &[], None),
            "docker run --rm --name kpool-u1 -- alpine sh -c \"$(cat \"$1\")\""
        );
        // Without commands the image's own command runs.
        let c = Container { image: "alpine", gpus: false, commands: false };
        assert_eq!(docker_line("u1", &c, &["A"], None), "docker run --rm --name kpool-u1 -e A -- alpine");
        // An image reference with shell syntax stays one literal word.
        let c = Container { image: "x;rm -rf /", gpus: false, commands: true };
        assert_eq!(
            docker_args("u1", &c, &[], None),
            ["docker", "run", "--rm", "--name", "kpool-u1", "--", "x;rm -rf /", "sh", "-c"]
        );
        assert!(docker_line("u1", &c, &[], None).contains(" -- 'x;rm -rf /' sh -c "));
        // An image that looks like an option comes after `--`, so docker never reads it as one.
        let c = Container { image: "--privileged", gpus: false, commands: false };
        assert_eq!(
            docker_args("u1", &c, &[], None),
            ["docker", "run", "--rm", "--name", "kpool-u1", "--", "--privileged"]
        );
    }

    #[test]
    fn images_that_docker_could_read_as_options_are_refused() {
        for ok in
            ["alpine", "ubuntu:24.04", "registry.example:5000/team/img@sha256:0123abcd", "pytorch/pytorch:2.3-cuda12"]
        {
            assert_eq!(check_image(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("--privileged", "starts with '-'"),
            ("-v/:/host", "starts with '-'"),
            ("alpine --privileged", "whitespace"),
            ("alpine\t-v", "whitespace"),
            ("alpine\n", "whitespace"),
            ("", "is empty"),
        ] {
            let msg = check_image(bad).unwrap_err();
            assert!(msg.starts_with(&format!("spec.image {bad:?}")) && msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn quoting_keeps_text_literal() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(env_file(&[("A".into(), "x'y\nz".into())]), "export A='x'\\''y\nz'\n");
    }

    #[test]
    fn the_job_runs_commands_in_order_with_set_e() {
        assert_eq!(
            job_script(&["echo a".into(), "if true; then\n  echo b\nfi".into()]),
            "set -e\necho a\nif true; then\n  echo b\nfi\n"
        );
    }

    #[test]
    fn uids_are_checked() {
        assert!(check_uid("0f1e2d3c-aaaa-bbbb-cccc-123456789abc").is_ok());
        for bad in ["", "../x", "a b", "a;b", "$(x)", "a/b"] {
            assert!(check_uid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_runner_quotes_the_working_directory() {
        let s = runner_script("u1", Some("it's here"), None);
        assert!(s.contains("  cd 'it'\\''s here' || exit 1\n"), "{s}");
        assert!(s.contains("D=\"$HOME/.kpool/runs/u1\"\n"));
        let s = runner_script("u1", Some("/ignored"), Some("docker run x"));
        assert!(s.contains("  exec docker run x\n") && !s.contains("/ignored"), "{s}");
    }

    #[test]
    fn every_script_is_valid_sh() {
        let line = docker_line("u1", &Container { image: "img", gpus: true, commands: true }, &["A"], Some("/w"));
        let scripts = [
            runner_script("u1", Some("it's"), None),
            runner_script("u1", None, Some(&line)),
            inspect_script("u1", true),
            write_script("u1", JOB_FILE),
            launch_script("u1"),
            status_script("u1"),
            stop_script("u1", 10),
            logs_script("u1", 0, 10),
        ];
        for script in scripts {
            let out = std::process::Command::new("sh").args(["-n", "-c", &script]).output().expect("sh");
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
            // Also through a login shell's `sh -c '…'`.
            let out = std::process::Command::new("sh").args(["-n", "-c", &remote(&script)]).output().expect("sh");
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
    }

    #[test]
    fn reports_are_parsed() {
        assert_eq!(parse_report("running\n"), Ok(Reported::Running));
        assert_eq!(parse_report("exited 3\n"), Ok(Reported::Exited(3)));
        assert_eq!(parse_report("noise\nvanished 137\n"), Ok(Reported::Vanished(137)));
        assert_eq!(parse_report("stopped 143"), Ok(Reported::Stopped(143)));
        assert_eq!(parse_report("absent"), Ok(Reported::Absent));
        assert!(parse_report("exited x").is_err());
        assert!(parse_report("").is_err());
    }

    #[test]
    fn chunks_do_not_end_inside_a_character() {
        let s = "aé€😀".as_bytes();
        assert_eq!(utf8_prefix(s), s.len());
        assert_eq!(utf8_prefix(&s[..s.len() - 1]), s.len() - 4);
        assert_eq!(utf8_prefix(&s[..2]), 1);
        assert_eq!(utf8_prefix(b"\xffab"), 3);
        assert_eq!(utf8_prefix(b"\xffa\xe2\x82"), 2);
    }
}
