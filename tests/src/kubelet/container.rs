//! A container as a process: the local binary its image maps to, started
//! in its own mount and UTS namespaces (`unshare`) with every volumeMount
//! bind-mounted at its path and the pod's name as hostname; its output fed
//! into the node's `containerLogs` buffers and a log file; its exit
//! reported to the pod's run.

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context as _, Result, anyhow};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use super::{ContainerState, Exit, PodRun, Proc, lock};
use crate::node::Logs;

impl PodRun {
    fn binary(&self, c: &Container) -> Result<(PathBuf, Vec<String>)> {
        let image = c.image.clone().unwrap_or_default();
        let cmd0 = c.command.as_ref().and_then(|c| c.first().cloned());
        let entry = self
            .ctx
            .config
            .images
            .iter()
            .find(|m| m.image == image && (m.command.is_none() || m.command == cmd0))
            .ok_or_else(|| anyhow!("no local binary for image {image:?} command {cmd0:?}"))?;
        let mut args: Vec<String> = c.command.iter().flatten().skip(1).cloned().collect();
        args.extend(c.args.iter().flatten().cloned());
        Ok((entry.path.clone(), args))
    }

    pub(super) async fn spawn(&mut self, i: usize) -> Result<()> {
        let c = self.specs[i].clone();
        let (bin, args) = match self.binary(&c) {
            Ok(x) => x,
            Err(e) => {
                self.runs[i].state = ContainerState::Waiting("ErrImagePull".into());
                self.write_status().await;
                return Err(e);
            }
        };
        let env = self.env(&c).await?;
        // Mounts and hostname are set up inside the new namespaces, then the
        // container's binary replaces the shell.
        let mut script = String::from("set -e\n");
        for m in c.volume_mounts.iter().flatten() {
            let mut src = self.dir.join("volumes").join(&m.name);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                src = src.join(sub);
            }
            let target = &m.mount_path;
            if src.is_dir() {
                script.push_str(&format!("mkdir -p {}\n", sh_quote(target)));
            } else {
                script.push_str(&format!(
                    "mkdir -p \"$(dirname {t})\"; [ -e {t} ] || : > {t}\n",
                    t = sh_quote(target)
                ));
            }
            script.push_str(&format!(
                "mount --bind {} {}\n",
                sh_quote(&src.display().to_string()),
                sh_quote(target)
            ));
            if m.read_only == Some(true) {
                script.push_str(&format!("mount -o remount,bind,ro {}\n", sh_quote(target)));
            }
        }
        script.push_str(&format!("hostname {}\n", sh_quote(&self.hostname())));
        if let Some(wd) = &c.working_dir {
            script.push_str(&format!("cd {}\n", sh_quote(wd)));
        }
        script.push_str("exec \"$@\"\n");
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args([
            "--mount",
            "--uts",
            "--fork",
            "--kill-child",
            "--",
            "/bin/sh",
            "-c",
            &script,
            &c.name,
        ])
        .arg(&bin)
        .args(&args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} for {}/{}", bin.display(), self.name, c.name))?;
        let pid = child.id().ok_or_else(|| anyhow!("no pid"))?;
        self.generation += 1;
        let generation = self.generation;
        self.procs.insert(i, Proc { pid, generation });
        lock(&self.ctx.pids).insert((self.name.clone(), c.name.clone()), pid);
        if let Some(d) = &self.ctx.config.pid_dir {
            let _ = std::fs::write(
                d.join(format!("kubelet-{}.{}.pid", self.name, c.name)),
                pid.to_string(),
            );
        }
        // A new run: the previous one's lines become `previous`.
        self.ctx.node.logs().restart(&self.ns, &self.name, &c.name);
        // Kept after the pod is gone (the pod directory is not), one file per
        // pod generation and container, all runs appended.
        let log_dir = self.ctx.config.work_dir.join("logs");
        let _ = tokio::fs::create_dir_all(&log_dir).await;
        let uid8: String = self.uid.chars().take(8).collect();
        let log_file = log_dir.join(format!("{}-{uid8}-{}.log", self.name, c.name));
        let logs = self.ctx.node.logs().clone();
        let (ns, pod, cname) = (self.ns.clone(), self.name.clone(), c.name.clone());
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                out,
                logs.clone(),
                ns.clone(),
                pod.clone(),
                cname.clone(),
                log_file.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                err,
                logs.clone(),
                ns.clone(),
                pod.clone(),
                cname.clone(),
                log_file.clone(),
            )));
        }
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // The output is complete before the exit is reported.
            for p in pumps {
                let _ = p.await;
            }
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
                Err(_) => 128 + 9,
            };
            let _ = tx.send(Exit {
                index: i,
                generation,
                code,
            });
        });
        self.runs[i].state = ContainerState::Running(Timestamp::now());
        self.runs[i].started = !self.runs[i].sidecar || self.specs[i].startup_probe.is_none();
        self.ctx.event(
            &self.pod,
            Some(&c.name),
            format!("started {}", bin.display()),
        );
        Ok(())
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    r: R,
    logs: Logs,
    ns: String,
    pod: String,
    container: String,
    file: PathBuf,
) {
    let mut lines = BufReader::new(r).lines();
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .await
        .ok();
    while let Ok(Some(line)) = lines.next_line().await {
        logs.append(&ns, &pod, &container, &line);
        if let Some(f) = f.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
        }
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/etc/a b"), "'/etc/a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
