"""The Qwen-VL model and the three training stages of Table 8."""
