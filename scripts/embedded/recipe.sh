# The embedded pair's training settings, sourced by train.sh and experiments.sh (one copy of the recipe).
# Needs WORK set; defines TEACHER_ARGS and DISTILL_ARGS (key=value overrides and flags for tadsr).
# Data (both): native-resolution multi-scale crops of the training photos (data.crop=native, scale 0.25-1, 8
# flips/rotations, 10% gray copies), each photo decoded once into a shared cache; the realesrgan-mild
# degradation (the realesrgan-test family with margins), x4.
DATA_ARGS=(data.crop=native data.degradation=realesrgan-mild data.gray_prob=0.1 data.cache_dir="$WORK/photo-cache"
           data.val_path="$WORK/data/val-hr" data.val_count=3 data.workers=1)
# Teacher: the tiny preset (Swin-UNet, 64 channels, pixel-unshuffle f4, residual x0, T=15, kappa 2) at GT 128,
# a quarter of the samples at t = T-1 (the student's step), learning rate halved at 3000 and 3600; 5000 steps.
TEACHER_ARGS=("${DATA_ARGS[@]}" data.gt_size=128 run.batch_size=8 teacher.t_last_prob=0.25 optim.lr=3e-4
              optim.warmup=100 optim.milestones=[3000,3600] optim.ema_rate=0.998 run.save_every=200
              run.val_every=600 run.log_every=20 -q)
# Student: TAD-SR distillation (L_distill + HSD + time-aware adversarial, the paper's lambdas) from a teacher cache of
# 512 pairs at GT 64 (a quarter of the teacher's crop area: the CPU budget). The texture-aware crops
# (data.texture_ref=8) and the adversarial lever were tried on the textured split and not shipped: texture_runs.sh and
# the model card.
DISTILL_ARGS=("${DATA_ARGS[@]}" data.gt_size=64 run.batch_size=8 distill.teacher_cache=512 optim.lr=1e-4
              optim.lr_d=1e-4 optim.warmup=50 optim.ema_rate=0.995 run.save_every=200 run.val_every=400
              run.log_every=10 -q)
STUDENT_STEPS=200  # of the 400-step run from the 5000-step teacher, the 200-step EMA (model card)
