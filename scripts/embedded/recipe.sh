# The embedded pair's training settings, sourced by train.sh and experiments.sh (one copy of the recipe).
# Needs WORK set; defines TEACHER_ARGS and DISTILL_ARGS (key=value overrides and flags for tadsr).
# Teacher: the tiny preset (Swin-UNet, 64 channels, pixel-unshuffle f4, residual x0, T=15, kappa 2), x4
# Real-ESRGAN pairs at GT 128.
TEACHER_ARGS=(data.gt_size=128 data.val_path="$WORK/data/val" data.val_count=3 run.batch_size=8 data.workers=1
              optim.lr=3e-4 optim.warmup=100 optim.ema_rate=0.995 run.save_every=200 run.val_every=400
              run.log_every=20 -q)
# Student: TAD-SR distillation (L_distill + HSD + time-aware adversarial) from a teacher cache of 512 pairs at GT 64
# (a quarter of the teacher's crop area: the CPU budget).
DISTILL_ARGS=(data.gt_size=64 data.val_path="$WORK/data/val" data.val_count=3 run.batch_size=8 data.workers=1
              distill.teacher_cache=512 optim.lr=1e-4 optim.lr_d=1e-4 optim.warmup=50 optim.ema_rate=0.995
              run.save_every=200 run.val_every=400 run.log_every=10 -q)
