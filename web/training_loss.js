// SVD Lab training: draws the loss chart in the SVD Lab Train node from its UI output
// {"ui": {"svdlab_loss": [{"steps": [...], "loss": [...]}], "text": [summary], "images": [loss.png]}}.
import { app } from "../../scripts/app.js";

function smooth(values, weight = 0.9) {
  let acc = 0;
  return values.map((v, i) => {
    acc = weight * acc + (1 - weight) * v;
    return acc / (1 - weight ** (i + 1));
  });
}

function draw(canvas, steps, loss) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#888";
  ctx.font = "11px sans-serif";
  if (!loss.length) return ctx.fillText("no loss yet", pad, h / 2);
  const lo = Math.min(...loss), hi = Math.max(...loss) > lo ? Math.max(...loss) : lo + 1e-6;
  const x = (i) => pad + ((steps[i] - steps[0]) / Math.max(1, steps[steps.length - 1] - steps[0])) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  const line = (values, color, width) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
  };
  line(loss, "#7aa7d8", 1);
  line(smooth(loss), "#1f5fb0", 2);
  ctx.fillText(`loss ${loss[loss.length - 1].toPrecision(4)} (max ${hi.toPrecision(3)}, min ${lo.toPrecision(3)})`, pad, 14);
  ctx.fillText(`step ${steps[steps.length - 1]}`, w - pad - 60, h - 8);
}

app.registerExtension({
  name: "svdlab.trainingLoss",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "SVDLab_Train") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const data = (output?.svdlab_loss || [])[0];
      if (!data) return;
      if (!this.svdlabLoss) {
        const canvas = document.createElement("canvas");
        canvas.width = 360;
        canvas.height = 180;
        // Fills the wrapper the frontend sizes, keeping the chart's 2:1 aspect.
        canvas.style.cssText = "width:100%;height:100%;object-fit:contain;background:var(--comfy-input-bg)";
        const widget = this.addDOMWidget("svdlab_loss", "svdlab_loss", canvas, { serialize: false, hideOnZoom: false,
          getMinHeight: () => 200 });
        widget.serialize = false; // not saved in widgets_values
        this.svdlabLoss = canvas;
      }
      draw(this.svdlabLoss, data.steps || [], data.loss || []);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
