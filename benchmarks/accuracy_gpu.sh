#!/usr/bin/env bash
# The accuracy runs of docs/research/accuracy.md that need a GPU, all at once on one GPU (the step is cheap there;
# the CPU's augmentation is the limit), then an optional quiet throughput table. Results are scored on the
# CPU afterwards, at full resolution, from the original photos (docs/research/accuracy.md says how).
#
#   benchmarks/gpu_run.sh --make-data ../shared/field_data gpu_acc --short-side 480 --quality 85 --unlabeled 0 \
#       --test-short-side 48      # the test photos only as placeholders: test is scored on the CPU machine
#   benchmarks/accuracy_gpu.sh gpu_acc OUT            # on the GPU machine; OUT gets a few tarballs
# Wave 5 scores its runs on the GPU machine (its ResNet-18 and -34 checkpoints are too big to come back), so
# its data folder carries the val and test photos unchanged and the training photos smaller:
#   benchmarks/gpu_run.sh --make-data ../shared/field_data gpu_acc --short-side 480 --quality 65 --unlabeled 0 \
#       --original-splits val test --max-mb 52
#
# Settings by environment: WAVE (1: schedule, init, width; 2: losses; 3: recipe E twice as long, and the
# ResNet-34 U-Net; 4: recipe E from scratch, and with 384 px crops; 5: width from scratch, the quarter and full
# ResNet-18 and the ResNet-34 U-Net with the cpu preset's recipe, scored here), DEVICE (cuda), LONGER / LONG / SHORT
# (iterations: 16000 / 8000 / 2800), WORKERS (2 per run; the longer runs of wave 3 get 2.5 times as many),
# DEADLINE (seconds after which unfinished runs are stopped and packed: 450), BENCH (1: throughput table
# when time is left), SCORE (1 in wave 5: score each run's best.pt on val and test at full resolution and test
# at short side 256 here, into the run folder's eval-*.json), EXTRA (flags added to every run, e.g. for a dry
# run on the CPU: DEVICE=cpu LONG=20 WORKERS=0 EXTRA="--eval-short-side 48 --batch-size 2").
set -u
data=$1 out=$2
py=${PYTHON:-python3} device=${DEVICE:-cuda} longer=${LONGER:-16000} long=${LONG:-8000} short=${SHORT:-2800}
wave=${WAVE:-1} workers=${WORKERS:-2} deadline=${DEADLINE:-450} bench=${BENCH:-1}
score=${SCORE:-$([ "$wave" = 5 ] && echo 1 || echo 0)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OPENCV_FOR_THREADS_NUM=1
work=runs/gpu-acc
rm -rf "$work" && mkdir -p "$work" "$out"
start=$SECONDS
left() { echo $((deadline - (SECONDS - start))); }

{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc --all; $py -c "import torch; print(torch.__version__)"; } \
    >"$work/machine.txt" 2>&1

# name and flags of each run (<group>-s<seed>); every run: the cpu preset's recipe (quarter U-Net, 480), on $device
if [ "$wave" = 1 ]; then jobs=(
    "qf-$long-s0 --iterations $long --seed 0"
    "qf-$long-s1 --iterations $long --seed 1"
    "qf-$long-s2 --iterations $long --seed 2"
    "qs-$long-s0 --iterations $long --seed 0 --init scratch"
    "qs-$long-s1 --iterations $long --seed 1 --init scratch"
    "qs-$long-s2 --iterations $long --seed 2 --init scratch"
    "hs-$long-s0 --iterations $long --seed 0 --init scratch --model unet-resnet18-half"
    "qfw-$long-s0 --iterations $long --seed 0 --loss jaccard+ce --class-weights auto"
    "qf-$short-s0 --iterations $short --seed 0"
    "qf-$short-s1 --iterations $short --seed 1"
    "qf-$short-s2 --iterations $short --seed 2"
); elif [ "$wave" = 2 ]; then jobs=(
    "qfd-$long-s0 --iterations $long --seed 0 --loss focal+dice"
    "qfd-$long-s1 --iterations $long --seed 1 --loss focal+dice"
    "qfd-$long-s2 --iterations $long --seed 2 --loss focal+dice"
    "qfw-$long-s1 --iterations $long --seed 1 --loss jaccard+ce --class-weights auto"
    "qfw-$long-s2 --iterations $long --seed 2 --loss jaccard+ce --class-weights auto"
); elif [ "$wave" = 3 ]; then jobs=(  # the cpu preset is recipe E (focal + Dice) since wave 2
    # the longer runs get more loader processes: the others end first, then these have the CPUs to themselves
    "qfd-$longer-s0 --iterations $longer --seed 0 --workers $((workers * 5 / 2))"
    "qfd-$longer-s1 --iterations $longer --seed 1 --workers $((workers * 5 / 2))"
    "qfd-$longer-s2 --iterations $longer --seed 2 --workers $((workers * 5 / 2))"
    "r34sd-$long-s0 --iterations $long --seed 0 --init scratch --model unet-resnet34"
    "r34sd-$long-s1 --iterations $long --seed 1 --init scratch --model unet-resnet34"
    "r34sd-$long-s2 --iterations $long --seed 2 --init scratch --model unet-resnet34"
); elif [ "$wave" = 5 ]; then jobs=(  # the cpu preset now: focal + Dice, quarter turns
    "qs-$long-s0 --iterations $long --seed 0 --init scratch"
    "qs-$long-s1 --iterations $long --seed 1 --init scratch"
    "qs-$long-s2 --iterations $long --seed 2 --init scratch"
    "r18s-$long-s0 --iterations $long --seed 0 --init scratch --model unet-resnet18"
    "r18s-$long-s1 --iterations $long --seed 1 --init scratch --model unet-resnet18"
    "r18s-$long-s2 --iterations $long --seed 2 --init scratch --model unet-resnet18"
    "r34s-$long-s0 --iterations $long --seed 0 --init scratch --model unet-resnet34"
    "r34s-$long-s1 --iterations $long --seed 1 --init scratch --model unet-resnet34"
    "r34s-$long-s2 --iterations $long --seed 2 --init scratch --model unet-resnet34"
); else jobs=(
    "qsd-$long-s0 --iterations $long --seed 0 --init scratch"
    "qsd-$long-s1 --iterations $long --seed 1 --init scratch"
    "qsd-$long-s2 --iterations $long --seed 2 --init scratch"
    "qfd384-$long-s0 --iterations $long --seed 0 --crop 384"
    "qfd384-$long-s1 --iterations $long --seed 1 --crop 384"
    "qfd384-$long-s2 --iterations $long --seed 2 --crop 384"
); fi
for job in "${jobs[@]}"; do
    read -r name flags <<<"$job"
    # shellcheck disable=SC2086
    timeout -s INT -k 20 "$(left)" $py -m weedseg.cli train --data-root "$data" --budget cpu --device "$device" \
        --workers "$workers" --out "$work/$name" $flags ${EXTRA:-} >"$work/$name.log" 2>&1 &
done
wait
echo "training ended after $((SECONDS - start)) s"
for job in "${jobs[@]}"; do
    read -r name _ <<<"$job"
    echo "$name: $(grep -o 'best validation mIoU.*' "$work/$name.log" || echo "unfinished: $(tail -c 300 "$work/$name.log" | tr '\r\n' '  ')")"
done | tee "$work/summary.txt"

if [ "$score" = 1 ]; then  # each run's three scores in turn, the runs side by side
    for job in "${jobs[@]}"; do
        read -r name _ <<<"$job"
        r="$work/$name"
        [ -f "$r/best.pt" ] || continue
        { for split in val test; do
              $py -m weedseg.cli evaluate "$r/best.pt" --data-root "$data" --split $split --full-res \
                  --device "$device" --out "$r/eval-$split-full.json"
          done
          $py -m weedseg.cli evaluate "$r/best.pt" --data-root "$data" --split test --score-short-side 256 \
              --device "$device" --out "$r/eval-test-256.json"; } >"$r/eval.log" 2>&1 &
    done
    wait
    echo "scored after $((SECONDS - start)) s"
    bench=0
fi

if [ "$bench" = 1 ] && [ "$(left)" -gt 60 ]; then
    timeout -k 10 "$(($(left) - 10))" $py benchmarks/training.py --devices "$device" --steps 10 \
        --data-root "$data" --json "$work/training.json" >"$work/training.md" 2>&1
fi

# logs, metrics and scores in one tarball, then each quarter group's checkpoints in one (at most 4 quarter
# models: < 16 MiB). A ResNet-18 or -34 checkpoint (57 / 98 MB) cannot come back (16 MiB a file): wave 5
# scores them here; in wave 3 the validation mIoU in metrics.jsonl is compared with the others'
# (`benchmarks/accuracy_report.py`, "val in training").
tar -czf "$out/logs.tar.gz" "$work"/*.txt "$work"/*.log "$work"/*.md "$work"/*.json "$work"/*/metrics.jsonl \
    "$work"/*/config.json "$work"/*/eval* 2>/dev/null
for group in $(for job in "${jobs[@]}"; do echo "${job%%-s[0-9]* *}"; done | grep -v '^r34\|^r18' | sort -u); do
    tar -czf "$out/$group.tar.gz" "$work/$group"-s*/best.pt 2>/dev/null
done
ls -la "$out"
cat "$work/summary.txt" "$work/training.md" 2>/dev/null || true
