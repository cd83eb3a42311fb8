//! Worker partitioning: worker `I` of `N` owns the shards with `shard % N == I`.

use std::fmt;
use std::str::FromStr;

/// One worker of a job array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    /// This worker's index, `0..count`.
    pub index: usize,
    /// How many workers share the job.
    pub count: usize,
}

impl Default for Worker {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Worker {
    /// Whether this worker owns shard `shard`.
    pub fn owns(&self, shard: usize) -> bool {
        shard % self.count == self.index
    }

    /// The worker given by the scheduler's environment: `SLURM_ARRAY_TASK_ID`/`SLURM_ARRAY_TASK_COUNT`,
    /// then Kubernetes `JOB_COMPLETION_INDEX` with `PIXFORGE_WORKER_COUNT`; else the single worker.
    pub fn from_env() -> Result<Self, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let parse = |k: &str, v: String| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("environment variable {k}: expected a non-negative integer, found {v:?}"))
        };
        if let (Some(i), Some(n)) = (get("SLURM_ARRAY_TASK_ID"), get("SLURM_ARRAY_TASK_COUNT")) {
            let min = get("SLURM_ARRAY_TASK_MIN").map(|m| parse("SLURM_ARRAY_TASK_MIN", m)).transpose()?.unwrap_or(0);
            let i = parse("SLURM_ARRAY_TASK_ID", i)?;
            return Self::new(
                i.checked_sub(min).ok_or("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?,
                parse("SLURM_ARRAY_TASK_COUNT", n)?,
            );
        }
        if let Some(i) = get("JOB_COMPLETION_INDEX") {
            let n = get("PIXFORGE_WORKER_COUNT").ok_or(
                "JOB_COMPLETION_INDEX is set but PIXFORGE_WORKER_COUNT is not: set it to the Job's `completions`",
            )?;
            return Self::new(parse("JOB_COMPLETION_INDEX", i)?, parse("PIXFORGE_WORKER_COUNT", n)?);
        }
        Ok(Self::default())
    }

    /// A worker, checking `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self, String> {
        if count == 0 || index >= count {
            return Err(format!("worker {index}/{count}: expected 0 <= I < N and N >= 1"));
        }
        Ok(Self { index, count })
    }
}

impl FromStr for Worker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("--worker {s:?}: expected I/N, e.g. 0/4"))?;
        let i = i.trim().parse().map_err(|_| format!("--worker {s:?}: I is not a number"))?;
        let n = n.trim().parse().map_err(|_| format!("--worker {s:?}: N is not a number"))?;
        Self::new(i, n)
    }
}

impl fmt::Display for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_own() {
        let w: Worker = "1/3".parse().unwrap();
        assert!(w.owns(4) && !w.owns(3));
        assert!("3/3".parse::<Worker>().is_err());
        assert!("x".parse::<Worker>().is_err());
        assert_eq!(w.to_string(), "1/3");
    }
}
