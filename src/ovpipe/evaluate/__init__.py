"""Evaluation: the lmms-eval model adapter (`lmms_model`) and offline tasks from the synthetic held-out split
(`local_tasks`).

Running it by hand (nothing is downloaded; the venv has ovpipe installed, so the `lmms_eval.models` entry
point `ovpipe` exists -- after editing pyproject.toml, `pip install -e . --no-deps` again):

    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python -c "from ovpipe.evaluate.local_tasks import write_tasks; write_tasks('/tmp/ov-tasks')"
    python -m lmms_eval --model ovpipe \\
        --model_args pretrained=/tmp/ovs/t1/sft/hf,batch_size=16 \\
        --tasks ovpipe_local --include_path /tmp/ov-tasks \\
        --output_path /tmp/ov-eval --log_samples
    # the blind control: the same with pretrained=...,gray_images=true

`--tasks` takes the group `ovpipe_local` or any of its tasks (see /tmp/ov-tasks/tasks.json for each task's
metric, chance level and format). pretrained may be an s3:// URI. Results land in
{output_path}/{model dir}/{timestamp}_results.json and, with --log_samples, one
{timestamp}_samples_{task}.jsonl per task beside it (model dir = the last two parts of the pretrained path
joined by "__", e.g. sft__hf; timestamp in --timezone, Asia/Singapore by default). lmms-eval exits 0 even
when the evaluation raised (it logs the traceback): add `--verbosity DEBUG` to get a non-zero exit, or
check that the results file exists.
"""
