"""The full PASS pipeline: extract -> build -> pretrain -> finetune -> pseudo_label -> evaluate.

Usage:
  python -m pass_jax.main --config=configs/pass.py:tiny --workdir=/tmp/w \
      --config.data.root=/path/to/pcaps --config.data.split=capture

The argument picks the model/duration variant: `tiny` (tests, demos, minutes
on a laptop CPU), `small` (CPU comparisons against baselines), `paper` (the
paper's encoder: N=6, 8x64 heads, d=512, FFN 1024; for GPUs/TPUs).
Durations are in epochs (float) unless a `*_steps` field is > 0.
"""
import ml_collections

VARIANTS = ("tiny", "small", "paper")


def data_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.root = ""               # dataset root; "" -> generate the demo dataset in workdir/demo_data
  d.prebuilt = ""            # a dataset dir built before (input_pipeline.build): skip the build stage
  d.labels_csv = ""         # "" -> root/labels.csv when it exists, else class folders
  d.split = "flow"          # flow (paper 8:1:1 per flow) | capture (grouped by file) | given
  d.split_file = ""         # CSV of `pcap,split` rows for split=given
  d.split_ratios = (0.8, 0.1, 0.1)
  d.label_fraction = 1.0    # fraction of training flows that keep their label
  d.seed = 0
  d.workers = 0             # extraction/build worker processes; 0 -> os.cpu_count()
  # Flow features (paper: m=128 bytes, n=32 packets).
  d.payload_bytes = 128     # m
  d.num_lengths = 32        # n
  d.length_kind = "ip"      # ip (IP total length) | payload (TCP payload length)
  d.count_empty_acks = True
  d.idle_timeout = 120.0    # seconds of silence after which a SYN starts a new flow
  # Filters.
  d.min_payload_bytes = 1
  d.tls_only = False
  d.min_flows_per_class = 10
  # Tokens.
  d.features = "both"       # both | rp | pl  (paper Table IV ablations)
  d.vocab_max_size = 0      # 0 -> unlimited; else the tail maps to [UNK]
  d.vocab_min_count = 0     # 0 -> keep every token; else tokens seen fewer times map to [UNK]
  d.mask_sni = False        # replace the TLS server name bytes in RP by zeros
  # Demo dataset made by input_pipeline/synthetic.py when root is "".
  d.demo = ml_collections.ConfigDict()
  d.demo.num_classes = 10
  d.demo.max_flows_per_class = 400
  d.demo.imbalance = 200.0  # largest / smallest class size
  d.demo.seed = 0
  # tf.data.
  d.shuffle_buffer = 20_000
  d.prefetch = 2
  return d


def model_config(variant: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "transformer"    # transformer | cnn | bilstm | bigru (baseline backbones)
  m.pooling = "cls"         # cls | mean
  m.norm = "pre"            # pre | post (pre-norm trains from scratch without plateaus; design.md)
  m.dropout = 0.1
  m.attention_dropout = 0.1
  m.proj_dim = 128          # contrastive projection head output
  m.dtype = "float32"       # float32 | bfloat16 (compute dtype; params stay fp32)
  if variant == "paper":
    m.num_layers, m.num_heads, m.head_dim, m.d_model, m.ffn_dim = 6, 8, 64, 512, 1024
  elif variant == "small":
    m.num_layers, m.num_heads, m.head_dim, m.d_model, m.ffn_dim = 2, 4, 32, 128, 256
  else:  # tiny
    m.num_layers, m.num_heads, m.head_dim, m.d_model, m.ffn_dim = 2, 2, 16, 32, 64
  return m


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  variant = arg or "tiny"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.stage = "all"           # all | extract | build | pretrain | finetune | pseudo_label | evaluate
  c.seed = 0
  c.quiet = False
  c.eval_split = "test"     # split the evaluate stage scores: test | validation | train
  c.data = data_config()
  if tiny:
    c.data.demo.num_classes = 6
    c.data.demo.max_flows_per_class = 400
    c.data.demo.imbalance = 20.0
  c.model = model_config(variant)

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.enabled = True           # False -> the `w/o CPT` ablation
  # paper: ~500k triples; `small` is sized for a 2-core CPU (whole pipeline ~20 min on 30k flows).
  c.pretrain.num_triples = {"tiny": 2_000, "small": 20_000, "paper": 500_000}[variant]
  c.pretrain.batch_size = 32 if tiny else 128
  c.pretrain.epochs = 1.0
  c.pretrain.steps = 0                # > 0 overrides epochs
  c.pretrain.lr = {"tiny": 1e-3, "small": 5e-4, "paper": 5e-5}[variant]
  c.pretrain.tau = 0.05
  c.pretrain.alpha = 2.0              # weight of strong negatives
  c.pretrain.weak_weight = 1.0        # weight of weak negatives
  c.pretrain.max_tries = 500          # Alg. 1 tries per anchor
  c.pretrain.weak_fraction = -1.0     # < 0: paper (y uniform); in [0,1]: share of weak negatives

  c.finetune = ml_collections.ConfigDict()
  c.finetune.batch_size = 32 if tiny else 64
  c.finetune.epochs = {"tiny": 15.0, "small": 5.0, "paper": 10.0}[variant]
  c.finetune.steps = 0
  c.finetune.min_steps = 0 if variant == "paper" else 200  # floor on epoch durations (few labels)
  c.finetune.lr = {"tiny": 1e-3, "small": 5e-4, "paper": 5e-5}[variant]
  c.finetune.loss = "ce"              # ce | focal
  c.finetune.focal_gamma = 2.0
  c.finetune.sampling = "none"        # none | ros | rus | class_weight (imbalance baselines)

  c.pli = ml_collections.ConfigDict()
  c.pli.enabled = True                # False -> the `w/o PLI` ablation
  c.pli.threshold = 0.95
  c.pli.threshold_candidates = ()     # non-empty -> choose thr by cross-validation on labelled data
  c.pli.cv_folds = 3                  # folds for that cross-validation
  c.pli.target_accuracy = 0.95        # lowest candidate whose held-out accepted accuracy >= this
  c.pli.epsilon = 0.001               # stop when val macro-F1 gains <= epsilon
  c.pli.limit = 5                     # at most this many rounds after M0
  c.pli.resample = True               # class-inverse resampling of pseudo-labels
  c.pli.resample_cap = 4              # a pseudo-labelled flow is drawn at most this many times
  c.pli.labeled_share = 0.5           # labelled rows repeated to be ~this share of a round's rows
  c.pli.init = "previous"             # previous (M_t-1 encoder, new head) | pretrained (CPT encoder)
  c.pli.weights = "learnable"         # learnable | fixed
  c.pli.w_labeled = 1.0
  c.pli.w_pseudo = 0.5
  c.pli.min_weight = 0.05             # floor so a learnable weight cannot collapse to zero

  c.optim = ml_collections.ConfigDict()
  c.optim.warmup = 0.03               # fraction of steps
  c.optim.schedule = "linear"         # linear | cosine | constant (decay after warmup)
  c.optim.weight_decay = 0.0          # > 0 -> AdamW
  c.optim.grad_clip = 1.0
  c.optim.b1, c.optim.b2 = 0.9, 0.999

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = False                 # shard params/optimizer state over the data axis

  c.log_every = 10 if tiny else 50
  c.eval_every = 0                    # 0 -> once per epoch
  c.checkpoint_every = 100 if tiny else 1000
  c.keep_checkpoints = 2

  c.report = ml_collections.ConfigDict()
  c.report.tsne_classes = ()          # () -> up to 10 largest classes
  c.report.tsne_max_points = 2000     # stratified sample of test flows for the t-SNE picture
  c.report.pictures = True
  return c
